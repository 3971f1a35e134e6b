"""Writing one run: params, per-step metrics, tags, artifacts and its end status.

Used by the trainer and the engines (verl, TRL), which pass plain dicts and floats; the
store is reached through `store.open_client`.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from workbench.names import FINISHED, RUNNING, TAG_FAILURE, TAG_PARENT, TAG_REPORT_DIGEST
from workbench.tracking.store import MAX_PARAM_LEN, PARAMS_PER_BATCH, experiment_id, open_client, tag_run


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
    step axis). The run records its writer process (`liveness.writer_tags`), so that a run
    left RUNNING by a killed process can be told from a live one. Uses the client API rather than mlflow's global active-run state so that a
    sweep worker can hold a parent run while trainers open children.
    """

    def __init__(self, *, experiment: str, run_name: str, tracking_uri: str | None = None,
                 params: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
                 artifacts: dict[str, str] | None = None, parent_run_id: str | None = None,
                 resume_run_id: str | None = None, writer: dict[str, str] | None = None):
        """`writer`: the tags naming the process whose death ends the run (default: this one)."""
        from mlflow.entities import Param

        from workbench.tracking.liveness import writer_tags

        self.client = open_client(tracking_uri)
        self.logged: dict[str, int] = {}  # a resumed run's last step in the store, per metric key
        if resume_run_id:
            run = self.client.get_run(resume_run_id)
            self.run_id = run.info.run_id
            # A killed run logged the steps after its last checkpoint, which the resumed run
            # computes again from that checkpoint: the store keeps the first record of each step.
            self.logged = {key: max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=-1)
                           for key in run.data.metrics}
            self.client.update_run(self.run_id, status=RUNNING)
            self.set_tags({"resumed": "true", **(writer or writer_tags())})
            return
        exp_id = experiment_id(self.client, experiment)
        all_tags = {**(tags or {}), **(writer or writer_tags())}
        if parent_run_id:
            all_tags[TAG_PARENT] = parent_run_id
        run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in (params or {}).items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + PARAMS_PER_BATCH], synchronous=True)
        for name, text in (artifacts or {}).items():
            self.log_text(text, name)

    @classmethod
    def attach(cls, run_id: str, tracking_uri: str | None = None) -> "RunTracker":
        """A writer for an existing run, left as it is (an engine process logging into the run we created)."""
        self = cls.__new__(cls)
        self.client = open_client(tracking_uri)
        self.run_id = run_id
        self.logged = {}
        return self

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """All of a step's metrics in one call (a call costs milliseconds; a step logs ~50 keys)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if step > self.logged.get(k, -1)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000], synchronous=True)

    def set_tags(self, tags: dict[str, Any]) -> None:
        tag_run(self.client, self.run_id, tags)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        if not rows:
            return
        data = {k: [r.get(k) for r in rows] for k in rows[0]}
        self.client.log_table(self.run_id, data=data, artifact_file=artifact_file)

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = FINISHED, reason: str | None = None) -> None:
        """End the run; FAILED and KILLED runs carry their reason as the `failure_reason` tag."""
        if reason:
            self.set_tags({TAG_FAILURE: reason[:5000]})
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
    def finish(self, status: str = FINISHED, reason: str | None = None) -> None: ...


def log_run_metrics(run_id: str, metrics: dict[str, float], step: int, tracking_uri: str | None = None) -> None:
    """One step's metrics into an existing run that another process (an engine) may be writing."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    open_client(tracking_uri).log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()],
                                        synchronous=True)


def set_run_tags(run_id: str, tags: dict[str, Any], tracking_uri: str | None = None) -> None:
    tag_run(open_client(tracking_uri), run_id, tags)


def log_report(run_id: str, directory: str | Path, tracking_uri: str | None = None, digest: str | None = None) -> bool:
    """Upload a report folder as the run's `report/` artifacts, unless the run already holds the
    report with this content `digest` (tag `dispo.report_digest`); returns whether it uploaded."""
    client = open_client(tracking_uri)
    if digest and client.get_run(run_id).data.tags.get(TAG_REPORT_DIGEST) == digest:
        return False
    client.log_artifacts(run_id, str(directory), "report")
    if digest:
        client.set_tag(run_id, TAG_REPORT_DIGEST, digest)
    return True
