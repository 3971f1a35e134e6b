"""Reaching a tracking store: MLflow clients, experiments, the UI on the store.

Every other module of the package gets its client here. MLflow is imported inside the
functions: importing the workbench (the CLI refusing a bad input) must not pay for it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from workbench.names import TAG_EXPERIMENT_KIND
from workbench.tracking.location import first_use_lock, probe_server, resolve_tracking_uri
from workbench.tracking.outage import PatientClient, is_server

PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
MAX_PARAM_LEN = 6000

# MLflow 3 UI opens an experiment without this tag in its GenAI view ("0 traces"); these are training runs.
EXPERIMENT_KIND = {TAG_EXPERIMENT_KIND: "custom_model_development"}

_OPENED: set[str] = set()


def open_client(uri: str | None):
    """An MlflowClient on the store `uri` names (None: the default store)."""
    import logging

    from mlflow import MlflowClient

    # A fresh SQLite store announces its migrations at INFO; runs need none of it. MLflow also logs
    # the traceback of a failed store write (a full disk) before raising it: the exception is
    # ours to report, in one line.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    resolved = resolve_tracking_uri(uri)
    if resolved in _OPENED:
        return _patient(MlflowClient(tracking_uri=resolved), resolved)
    # A server that does not answer is one line now, not MLflow's minutes of retries.
    probe_server(resolved)
    # The first use of a store in this process opens it, and a new SQLite store gets its schema
    # then: under a file lock, so that runs started at once cannot race MLflow's migrations.
    with first_use_lock(resolved):
        client = _patient(MlflowClient(tracking_uri=resolved), resolved)
        client.search_experiments(max_results=1)
    _OPENED.add(resolved)
    return client


def _patient(client, uri: str):
    """A server's client waits out the server's outages (workbench.tracking.outage); a file store's is as is."""
    return PatientClient(client, uri) if is_server(uri) else client


def connect(uri: str | None = None) -> None:
    """Import MLflow and build a client now (seconds on a busy machine), e.g. before taking a lock."""
    open_client(uri)


def require_store(uri: str | None) -> str:
    """The resolved tracking URI of an existing store: a mistyped path must not create an empty SQLite store,
    and a server that does not answer is a UserError within seconds."""
    from workbench.errors import UserError

    uri = resolve_tracking_uri(uri)
    probe_server(uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.exists():
            raise UserError(f"no MLflow store at {path} (tracking URI {uri}); pass --tracking-uri or set "
                            "MLFLOW_TRACKING_URI to the store the runs were logged to")
    return uri


def reading_client(uri: str | None):
    """A client on an existing store (see `require_store`)."""
    return open_client(require_store(uri))


def experiment_id(client, name: str) -> str:
    """The experiment's id, created when missing; either way tagged so that the UI opens on the runs table."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags=EXPERIMENT_KIND)
    if not all(exp.tags.get(k) == v for k, v in EXPERIMENT_KIND.items()):
        for k, v in EXPERIMENT_KIND.items():
            client.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


def tag_run(client, run_id: str, tags: dict[str, Any]) -> None:
    """Set tags on a run in one call, values as strings."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)


def drop_tag(run_id: str, key: str, tracking_uri: str | None = None) -> None:
    """Delete a run's tag `key` when it has one (a resumed run's reason for its earlier end)."""
    client = open_client(tracking_uri)
    if key in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, key)


def search_runs(client, filter_string: str, experiment_ids: list[str] | None = None) -> list:
    """Every run matching `filter_string` (all active experiments when none are named), newest first."""
    from mlflow.entities import ViewType

    ids = experiment_ids or [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    out, token = [], None
    while True:
        page = client.search_runs(ids, filter_string, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        out += page
        token = page.token
        if not token:
            return out


def ui_command(tracking_uri: str | None, host: str, port: int) -> list[str]:
    """`mlflow ui` on the store the runs were logged to (argv for subprocess)."""
    uri = resolve_tracking_uri(tracking_uri)
    # One worker: a local UI serves one reader, and 4 (the default) start slowly on a small machine.
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
            "--workers", "1"]


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """Where the MLflow UI shows a run."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
