"""The only module that talks to MLflow.

Writers for training runs (top), for studies (middle, used by sweep.py) and readers for
reports (bottom, used by report.py). Everything else in the workbench passes plain dicts
and floats here, so a change of tracking backend touches one file.
"""

from __future__ import annotations

# ---- runs: used by trainer.py ----

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
_MAX_PARAM_LEN = 6000


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Explicit URI, else MLFLOW_TRACKING_URI, else a SQLite store in the working directory."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _client(uri: str | None):
    import logging

    from mlflow import MlflowClient

    # Alembic prints every migration of a fresh SQLite store at INFO; runs need none of it.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=resolve_tracking_uri(uri))


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunTracker:
    """One MLflow run: params once, metrics batched one call per step, tags, tables, status.

    Opens a new run, or reopens `resume_run_id` (a resumed run keeps its id, params and
    step axis). Uses the client API rather than mlflow's global active-run state so that a
    sweep worker can hold a parent run while trainers open children.
    """

    def __init__(self, *, experiment: str, run_name: str, tracking_uri: str | None = None,
                 params: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
                 artifacts: dict[str, str] | None = None, parent_run_id: str | None = None,
                 resume_run_id: str | None = None):
        from mlflow.entities import Param

        self.client = _client(tracking_uri)
        if resume_run_id:
            run = self.client.get_run(resume_run_id)
            self.run_id = run.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "resumed", "true")
            return
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        items = [Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in (params or {}).items()]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _PARAMS_PER_BATCH], synchronous=True)
        for name, text in (artifacts or {}).items():
            self.log_text(text, name)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """All of a step's metrics in one call (a call costs milliseconds; a step logs ~50 keys)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000], synchronous=True)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        if not rows:
            return
        data = {k: [r.get(k) for r in rows] for k in rows[0]}
        self.client.log_table(self.run_id, data=data, artifact_file=artifact_file)

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """End the run; FAILED and KILLED runs carry their reason as the `failure_reason` tag."""
        if reason:
            self.set_tags({"failure_reason": reason[:5000]})
        self.client.set_terminated(self.run_id, status=status)


class NullTracker:
    """Same surface as RunTracker, records nothing: for timing a run without tracking."""

    run_id = "untracked"

    def __init__(self, **_: Any):
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None: ...
    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None: ...


def run_info(run_id: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Status, tags and params of a run, as plain dicts (used to resume a run)."""
    run = _client(tracking_uri).get_run(run_id)
    return {"status": run.info.status, "tags": dict(run.data.tags), "params": dict(run.data.params),
            "experiment_id": run.info.experiment_id, "name": run.info.run_name}


def download_text(run_id: str, artifact_file: str, tracking_uri: str | None = None) -> str:
    with tempfile.TemporaryDirectory() as d:
        path = _client(tracking_uri).download_artifacts(run_id, artifact_file, d)
        return Path(path).read_text()



# ---- studies: used by sweep.py ----

_TRIAL_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}


def open_study_run(*, study_name: str, experiment: str, tags: dict[str, str], texts: dict[str, str] | None = None,
                   files: list[str | Path] | None = None, tracking_uri: str | None = None) -> str:
    """The study's parent run: the one tagged `dispo.study`=study_name is reopened, else one is created.

    Reopening (not duplicating) keeps one run tree per study however often a sweep resumes. A
    run of the same name on another Optuna storage (tag `optuna.storage`) is another study.
    """
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    found = [r for r in client.search_runs([exp_id], f"tags.`dispo.study` = '{study_name}' and tags.`dispo.kind` = 'study'",
                                           order_by=["attributes.start_time ASC"])
             if r.data.tags.get("optuna.storage") == tags.get("optuna.storage")]
    all_tags = {**tags, "dispo.kind": "study", "dispo.study": study_name}
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        _set_tags(client, run_id, all_tags)
    else:
        run_id = client.create_run(exp_id, run_name=study_name, tags=all_tags).info.run_id
    for name, text in (texts or {}).items():
        client.log_text(run_id, text, name)
    for path in files or []:
        client.log_artifact(run_id, str(path))
    return run_id


def close_study_run(run_id: str, *, status: str, metrics: dict[str, float] | None = None,
                    tags: dict[str, str] | None = None, tracking_uri: str | None = None) -> None:
    client = _client(tracking_uri)
    _log_values(client, run_id, metrics or {}, tags or {})
    client.set_terminated(run_id, status=status)


def open_trial_run(*, parent_run_id: str, study_name: str, trial_number: int, params: dict[str, Any],
                   tags: dict[str, str] | None = None, tracking_uri: str | None = None) -> str:
    """A child run of the study run for one trial; the trainer's runs (one per seed) nest under it."""
    from mlflow.entities import Param

    client = _client(tracking_uri)
    parent = client.get_run(parent_run_id)
    all_tags = {**(tags or {}), "mlflow.parentRunId": parent_run_id, "dispo.kind": "trial",
                "dispo.study": study_name, "dispo.trial": str(trial_number), "dispo.state": "RUNNING"}
    run = client.create_run(parent.info.experiment_id, run_name=f"{study_name}-t{trial_number:04d}", tags=all_tags)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in params.items()],
                     synchronous=True)
    return run.info.run_id


def close_trial_run(run_id: str, *, state: str, metrics: dict[str, float] | None = None,
                    tags: dict[str, str] | None = None, tracking_uri: str | None = None) -> None:
    """Write the trial's values and Optuna state back; COMPLETE and PRUNED end FINISHED, FAIL ends FAILED."""
    client = _client(tracking_uri)
    _log_values(client, run_id, metrics or {}, {**(tags or {}), "dispo.state": state})
    client.set_terminated(run_id, status=_TRIAL_STATUS.get(state, "FAILED"))


def kill_runs(run_ids: list[str], reason: str, tracking_uri: str | None = None) -> int:
    """Mark runs left RUNNING by a killed sweep, and their RUNNING children, KILLED; returns how many."""
    client = _client(tracking_uri)
    killed = 0
    todo = list(run_ids)
    while todo:
        run_id = todo.pop()
        run = client.get_run(run_id)
        children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
        todo += [c.info.run_id for c in children]
        if run.info.status == "RUNNING":
            _set_tags(client, run_id, {"failure_reason": reason, "dispo.state": "FAIL"} if
                      run.data.tags.get("dispo.kind") == "trial" else {"failure_reason": reason})
            client.set_terminated(run_id, status="KILLED")
            killed += 1
    return killed


def kill_running_trials(parent_run_id: str, reason: str, tracking_uri: str | None = None) -> int:
    """After a sweep died: every RUNNING run beneath the study run (trials, seed runs) becomes KILLED."""
    client = _client(tracking_uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    return kill_runs([c.info.run_id for c in children], reason, tracking_uri)


def _set_tags(client, run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)


def _log_values(client, run_id: str, metrics: dict[str, float], tags: dict[str, Any]) -> None:
    from mlflow.entities import Metric, RunTag

    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)


# ---- reading: used by report.py ----
