"""The only module that talks to MLflow.

Writers for training runs (top), for studies (middle, used by sweep.py) and readers for
reports (bottom, used by report.py). Everything else in the workbench passes plain dicts
and floats here, so a change of tracking backend touches one file.
"""

from __future__ import annotations

# ---- runs: used by trainer.py ----

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from workbench.names import (FAILED, FINISHED, KILLED, KIND_STUDY, KIND_TRIAL, RUNNING, TAG_FAILURE, TAG_KIND,
                             TAG_OPTUNA_STORAGE, TAG_PARENT, TAG_REPORT_DIGEST, TAG_SEED, TAG_STATE, TAG_STUDY,
                             TAG_TRIAL)
from workbench.stores import DEFAULT_TRACKING_URI, first_use_lock, resolve_tracking_uri  # noqa: F401 - re-exported

_PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
_MAX_PARAM_LEN = 6000


def _client(uri: str | None):
    import logging

    from mlflow import MlflowClient

    # A fresh SQLite store announces its migrations at INFO; runs need none of it.
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    resolved = resolve_tracking_uri(uri)
    if resolved in _OPENED:
        return MlflowClient(tracking_uri=resolved)
    # The first use of a store in this process opens it, and a new SQLite store gets its schema
    # then: under a file lock, so that runs started at once cannot race MLflow's migrations.
    with first_use_lock(resolved):
        client = MlflowClient(tracking_uri=resolved)
        client.search_experiments(max_results=1)
    _OPENED.add(resolved)
    return client


_OPENED: set[str] = set()


def connect(uri: str | None = None) -> None:
    """Import MLflow and build a client now (seconds on a busy machine), e.g. before taking a lock."""
    _client(uri)


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
                 resume_run_id: str | None = None):
        from mlflow.entities import Param

        from workbench.liveness import writer_tags

        self.client = _client(tracking_uri)
        self.logged: dict[str, int] = {}  # a resumed run's last step in the store, per metric key
        if resume_run_id:
            run = self.client.get_run(resume_run_id)
            self.run_id = run.info.run_id
            # A killed run logged the steps after its last checkpoint, which the resumed run
            # computes again from that checkpoint: the store keeps the first record of each step.
            self.logged = {key: max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=-1)
                           for key in run.data.metrics}
            self.client.update_run(self.run_id, status=RUNNING)
            self.set_tags({"resumed": "true", **writer_tags()})
            return
        exp_id = experiment_id(self.client, experiment)
        all_tags = {**(tags or {}), **writer_tags()}
        if parent_run_id:
            all_tags[TAG_PARENT] = parent_run_id
        run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        items = [Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in (params or {}).items()]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _PARAMS_PER_BATCH], synchronous=True)
        for name, text in (artifacts or {}).items():
            self.log_text(text, name)

    @classmethod
    def attach(cls, run_id: str, tracking_uri: str | None = None) -> "RunTracker":
        """A writer for an existing run, left as it is (an engine process logging into the run we created)."""
        self = cls.__new__(cls)
        self.client = _client(tracking_uri)
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


def run_info(run_id: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Status, tags and params of a run, as plain dicts (used to resume a run)."""
    run = _client(tracking_uri).get_run(run_id)
    return {"status": run.info.status, "tags": dict(run.data.tags), "params": dict(run.data.params),
            "experiment_id": run.info.experiment_id, "name": run.info.run_name}


def metric_histories(run_id: str, keys: list[str], tracking_uri: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """Full (step, value) series of a run's metrics, step-sorted (benchmarks and checks)."""
    client = _client(tracking_uri)
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def metric_keys(run_id: str, tracking_uri: str | None = None) -> list[str]:
    """Every metric key a run has (engine runs: to translate what the engine logged)."""
    return sorted(_client(tracking_uri).get_run(run_id).data.metrics)


def log_run_metrics(run_id: str, metrics: dict[str, float], step: int, tracking_uri: str | None = None) -> None:
    """One step's metrics into an existing run that another process (an engine) may be writing."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    _client(tracking_uri).log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()],
                                    synchronous=True)


def set_run_tags(run_id: str, tags: dict[str, Any], tracking_uri: str | None = None) -> None:
    _set_tags(_client(tracking_uri), run_id, tags)


def download_text(run_id: str, artifact_file: str, tracking_uri: str | None = None) -> str:
    with tempfile.TemporaryDirectory() as d:
        path = _client(tracking_uri).download_artifacts(run_id, artifact_file, d)
        return Path(path).read_text()



# ---- studies: used by sweep.py ----

_TRIAL_STATUS = {"COMPLETE": FINISHED, "PRUNED": FINISHED, "FAIL": FAILED}  # Optuna state -> run status


# MLflow 3 UI opens an experiment without this tag in its GenAI view ("0 traces"); these are training runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client, name: str) -> str:
    """The experiment's id, created when missing; either way tagged so that the UI opens on the runs table."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags=EXPERIMENT_KIND)
    if not all(exp.tags.get(k) == v for k, v in EXPERIMENT_KIND.items()):
        for k, v in EXPERIMENT_KIND.items():
            client.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


def open_study_run(*, study_name: str, experiment: str, tags: dict[str, str], texts: dict[str, str] | None = None,
                   files: list[str | Path] | None = None, tracking_uri: str | None = None,
                   params: dict[str, str] | None = None) -> str:
    """The study's parent run: the one tagged `dispo.study`=study_name is reopened, else one is created.

    Reopening (not duplicating) keeps one run tree per study however often a sweep resumes. A
    run of the same name on another Optuna storage (tag `optuna.storage`) is another study.
    """
    client = _client(tracking_uri)
    exp_id = experiment_id(client, experiment)
    found = [r for r in client.search_runs([exp_id], f"tags.`{TAG_STUDY}` = '{study_name}' and tags.`{TAG_KIND}` = '{KIND_STUDY}'",
                                           order_by=["attributes.start_time ASC"])
             if r.data.tags.get(TAG_OPTUNA_STORAGE) == tags.get(TAG_OPTUNA_STORAGE)]
    all_tags = {**tags, TAG_KIND: KIND_STUDY, TAG_STUDY: study_name}
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status=RUNNING)
        _set_tags(client, run_id, all_tags)
    else:
        run_id = client.create_run(exp_id, run_name=study_name, tags=all_tags).info.run_id
    if params and not found:  # a resumed study keeps the params it was opened with (MLflow params are immutable)
        from mlflow.entities import Param

        client.log_batch(run_id, params=[Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in params.items()],
                         synchronous=True)
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
    all_tags = {**(tags or {}), TAG_PARENT: parent_run_id, TAG_KIND: KIND_TRIAL,
                TAG_STUDY: study_name, TAG_TRIAL: str(trial_number), TAG_STATE: "RUNNING"}  # Optuna's state
    run = client.create_run(parent.info.experiment_id, run_name=f"{study_name}-t{trial_number:04d}", tags=all_tags)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in params.items()],
                     synchronous=True)
    return run.info.run_id


def close_trial_run(run_id: str, *, state: str, metrics: dict[str, float] | None = None,
                    tags: dict[str, str] | None = None, tracking_uri: str | None = None,
                    killed: bool = False) -> None:
    """Write the trial's values and Optuna state back; COMPLETE and PRUNED end FINISHED, FAIL ends
    FAILED, or KILLED when the sweep was interrupted."""
    client = _client(tracking_uri)
    _log_values(client, run_id, metrics or {}, {**(tags or {}), TAG_STATE: state})
    client.set_terminated(run_id, status=KILLED if killed else _TRIAL_STATUS.get(state, FAILED))


def kill_runs(run_ids: list[str], reason: str, tracking_uri: str | None = None) -> int:
    """Mark runs left RUNNING by a killed sweep, and their RUNNING children, KILLED; returns how many."""
    client = _client(tracking_uri)
    killed = 0
    todo = list(run_ids)
    while todo:
        run_id = todo.pop()
        run = client.get_run(run_id)
        children = client.search_runs([run.info.experiment_id], f"tags.`{TAG_PARENT}` = '{run_id}'")
        todo += [c.info.run_id for c in children]
        if run.info.status == RUNNING:
            _set_tags(client, run_id, {TAG_FAILURE: reason, TAG_STATE: "FAIL"} if
                      run.data.tags.get(TAG_KIND) == KIND_TRIAL else {TAG_FAILURE: reason})
            client.set_terminated(run_id, status=KILLED)
            killed += 1
    return killed


def kill_running_trials(parent_run_id: str, reason: str, tracking_uri: str | None = None) -> int:
    """After a sweep died: every RUNNING run beneath the study run (trials, seed runs) becomes KILLED."""
    client = _client(tracking_uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.`{TAG_PARENT}` = '{parent_run_id}'")
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

import difflib
import math as _math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

_RUN_ID_LEN = 32


@dataclass(frozen=True)
class MetricSeries:
    """One metric's full history, sorted by step; one value per step (the last one logged)."""

    steps: np.ndarray  # (N,) int64
    values: np.ndarray  # (N,) float64, NaN where NaN was logged
    elapsed_s: np.ndarray  # (N,) float64, seconds from the run's start to the value's timestamp


@dataclass
class RunRecord:
    """A run as the report sees it: plain data, no MLflow objects."""

    run_id: str
    name: str
    experiment_id: str
    status: str
    start_ms: int
    end_ms: int | None
    params: dict[str, str]
    tags: dict[str, str]
    metric_keys: tuple[str, ...]
    metrics: dict[str, MetricSeries] = field(default_factory=dict)  # filled by load_histories

    @property
    def parent_run_id(self) -> str | None:
        return self.tags.get(TAG_PARENT)


@dataclass
class TargetRuns:
    """What a report target names: its runs and where the report is logged back to."""

    kind: str  # "run" | "trial" | "study" | "experiment"
    name: str
    runs: list[RunRecord]  # runs with metrics, in a stable order
    anchor_run_id: str | None  # the run itself, the trial's run or the study's parent run; None for an experiment
    experiment_id: str
    study_storage: str | None = None  # the parent run's `optuna.storage` tag
    notes: list[str] = field(default_factory=list)


def require_store(uri: str | None) -> str:
    """The resolved tracking URI of an existing store: a mistyped path must not create an empty SQLite store."""
    from workbench.errors import UserError

    uri = resolve_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.exists():
            raise UserError(f"no MLflow store at {path} (tracking URI {uri}); pass --tracking-uri or set "
                            "MLFLOW_TRACKING_URI to the store the runs were logged to")
    return uri


def _reading_client(uri: str | None):
    """A client on an existing store (see `require_store`)."""
    return _client(require_store(uri))


def _record(run) -> RunRecord:
    info = run.info
    return RunRecord(run_id=info.run_id, name=info.run_name or info.run_id, experiment_id=info.experiment_id,
                     status=info.status, start_ms=info.start_time or 0, end_ms=info.end_time,
                     params=dict(run.data.params), tags=dict(run.data.tags),
                     metric_keys=tuple(sorted(run.data.metrics)))


def _search(client, filter_string: str, experiment_ids: list[str] | None = None) -> list:
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


def _quote(value: str) -> str:
    from workbench.errors import UserError

    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise UserError(f"target {value!r} holds both quote characters; pass its run id instead")


def resolve_target(target: str, tracking_uri: str | None = None) -> TargetRuns:
    """Find what `target` names, tried in order: run id, study name, run name, experiment name.

    A study wins over a run of the same name because the study's parent run carries the
    study's name; a sweep's trial run (by id or name) stands for its seeds' training runs.
    An unknown target raises UserError listing the closest names.
    """
    client = _reading_client(tracking_uri)
    notes: list[str] = []
    run = _get_run(client, target) if len(target) == _RUN_ID_LEN else None
    if run is not None and run.data.tags.get(TAG_KIND) == KIND_STUDY:
        target = run.data.tags.get(TAG_STUDY, target)
        run = None
    if run is None:
        parents = _search(client, f"tags.`{TAG_KIND}` = '{KIND_STUDY}' and tags.`{TAG_STUDY}` = {_quote(target)}")
        if parents:
            return _study_target(client, target, parents)
        named = _search(client, f"attributes.run_name = {_quote(target)}")
        if named:
            run = named[0]
            if len(named) > 1:
                notes.append(f"{len(named)} runs are named {target}; showing the latest ({run.info.run_id}); "
                             "pass a run id for another")
    if run is not None and run.data.tags.get(TAG_KIND) == KIND_TRIAL:
        # A sweep trial's run holds its value; its training runs (one per seed) sit beneath it.
        seeds = [_record(r) for r in _search(client, f"tags.`{TAG_PARENT}` = '{run.info.run_id}'",
                                             [run.info.experiment_id])]
        seeds = sorted((r for r in seeds if r.metric_keys), key=lambda r: (r.start_ms, _int(r.tags.get(TAG_SEED))))
        return TargetRuns("trial", run.info.run_name, seeds, run.info.run_id, run.info.experiment_id, notes=notes)
    if run is not None:
        rec = _record(run)
        return TargetRuns("run", rec.name, [rec], rec.run_id, rec.experiment_id, notes=notes)
    exp = client.get_experiment_by_name(target)
    if exp is not None:
        runs = [_record(r) for r in _search(client, "", [exp.experiment_id])]
        parents = {r.parent_run_id for r in runs}  # study and trial runs: summaries, not training curves
        runs = sorted((r for r in runs if r.metric_keys and r.run_id not in parents), key=lambda r: r.start_ms)
        return TargetRuns("experiment", target, runs, None, exp.experiment_id, notes=notes)
    raise _unknown(client, target)


def run_tags(run_id: str, tracking_uri: str | None = None) -> dict[str, str]:
    """A run's tags (e.g. a study's parent run: its declared claims)."""
    return dict(_reading_client(tracking_uri).get_run(run_id).data.tags)


def resolve_run(name_or_id: str, tracking_uri: str | None = None) -> RunRecord:
    """A single run by id or name (for --compare); the latest when several share the name."""
    found = resolve_target(name_or_id, tracking_uri)
    if found.kind != "run":
        from workbench.errors import UserError

        raise UserError(f"--compare takes runs; {name_or_id!r} is a{'n' if found.kind[0] == 'e' else ''} {found.kind}")
    return found.runs[0]


def _get_run(client, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def _study_target(client, name: str, parents: list) -> TargetRuns:
    """The study's training runs: the parent's descendants plus runs tagged with the study name."""
    parent = parents[0]
    notes = [f"{len(parents)} parent runs carry study {name}; using the latest ({parent.info.run_id})"
             ] if len(parents) > 1 else []
    everything = _search(client, "", [parent.info.experiment_id])
    children: dict[str, list] = {}
    for r in everything:
        children.setdefault(r.data.tags.get(TAG_PARENT), []).append(r)
    found = {r.info.run_id: r for r in everything if r.data.tags.get(TAG_STUDY) == name}
    frontier, seen = [parent.info.run_id], {parent.info.run_id}
    while frontier:  # children, then theirs: a sweep may nest seed runs under trial runs
        kids = [c for p in frontier for c in children.get(p, []) if c.info.run_id not in seen]
        seen |= {c.info.run_id for c in kids}
        found |= {c.info.run_id: c for c in kids}
        frontier = [c.info.run_id for c in kids]
    found.pop(parent.info.run_id, None)
    # Trial runs hold the trial's values, not training curves: keep the leaves (the seed runs).
    runs = [_record(r) for r in found.values() if r.data.metrics and r.info.run_id not in children]
    runs.sort(key=lambda r: (_int(r.tags.get(TAG_TRIAL)), r.start_ms, r.name))
    return TargetRuns("study", name, runs, parent.info.run_id, parent.info.experiment_id,
                      study_storage=parent.data.tags.get(TAG_OPTUNA_STORAGE), notes=notes)


def _int(text: str | None) -> float:
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return _math.inf


def _unknown(client, target: str):
    from mlflow.entities import ViewType

    from workbench.errors import UserError

    experiments = [e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    runs = _search(client, "")
    names = set(experiments) | {r.info.run_name for r in runs if r.info.run_name}
    names |= {r.data.tags[TAG_STUDY] for r in runs if TAG_STUDY in r.data.tags}
    close = difflib.get_close_matches(target, sorted(names), n=5, cutoff=0.5)
    if close:
        hint = "closest: " + ", ".join(close)
    elif names:
        hint = "known names include: " + ", ".join(sorted(names)[:5])
    else:
        hint = "the store holds no runs"
    return UserError(f"no run id, study, run name or experiment matches {target!r}; {hint}")


def load_histories(runs: list[RunRecord], tracking_uri: str | None = None) -> None:
    """Fill `run.metrics` with every metric's full history (not the last values search_runs gives).

    On a SQL store one query reads the metrics table through MLflow's own table model: for
    64 runs x 40 keys x 200 steps that takes about 2 s, against about 14 s for one
    `get_metric_history` call per (run, key), threads or not (the per-call cost is Python
    work under the GIL). A tracking server is asked for whole series, one request per metric
    key and up to 100 runs (`_server_metric_rows`); other stores get one call per (run, key)
    in a thread pool, where waiting on the network overlaps.
    """
    if not runs:
        return
    client = _reading_client(tracking_uri)
    try:
        rows = _sql_metric_rows(client, [r.run_id for r in runs])
    except _NotSql:
        uri = resolve_tracking_uri(tracking_uri)
        rows = (_server_metric_rows(client, runs) if uri.startswith(("http://", "https://"))
                else _client_metric_rows(client, runs))
    import pandas as pd

    df = pd.DataFrame(rows, columns=["run_id", "key", "step", "timestamp", "value"])
    # A resumed run may log a step twice; the later value is the one that counts.
    df = df.sort_values(["run_id", "key", "step", "timestamp"], kind="stable")
    df = df.drop_duplicates(["run_id", "key", "step"], keep="last")
    start = {r.run_id: r.start_ms for r in runs}
    by_id = {r.run_id: r for r in runs}
    for (run_id, key), g in df.groupby(["run_id", "key"], sort=False):
        by_id[run_id].metrics[key] = MetricSeries(
            steps=g["step"].to_numpy(np.int64), values=g["value"].to_numpy(np.float64),
            elapsed_s=(g["timestamp"].to_numpy(np.float64) - start[run_id]) / 1000.0)


class _NotSql(Exception):
    pass


def _sql_metric_rows(client, run_ids: list[str]) -> list[tuple]:
    try:
        import sqlalchemy as sa
        from mlflow.store.tracking.dbmodels.models import SqlMetric
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError as e:  # pragma: no cover - mlflow without its SQL extras
        raise _NotSql from e
    store = client._tracking_client.store  # no public accessor; the table model is MLflow's own
    if not isinstance(store, SqlAlchemyStore):
        raise _NotSql
    cols = (SqlMetric.run_uuid, SqlMetric.key, SqlMetric.step, SqlMetric.timestamp, SqlMetric.value, SqlMetric.is_nan)
    out: list[tuple] = []
    with store.engine.connect() as conn:
        for i in range(0, len(run_ids), 500):  # stay far below SQL parameter limits
            stmt = sa.select(*cols).where(SqlMetric.run_uuid.in_(run_ids[i:i + 500]))
            out += [(r, k, s, t, _math.nan if nan else v) for r, k, s, t, v, nan in conn.execute(stmt)]
    return out


def _client_metric_rows(client, runs: list[RunRecord]) -> list[tuple]:
    jobs = [(r.run_id, k) for r in runs for k in r.metric_keys]

    def fetch(job):
        run_id, key = job
        return [(run_id, key, m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [row for rows in pool.map(fetch, jobs) for row in rows]


_BULK_RUNS, _BULK_MAX_POINTS = 100, 25000  # the server's limits for metrics/get-history-bulk


def _server_metric_rows(client, runs: list[RunRecord]) -> list[tuple]:
    """Full histories from an `mlflow server`: one request per metric key per 100 runs.

    Uses the server's `ajax-api/2.0/mlflow/metrics/get-history-bulk` route (the one its UI
    charts read), which the server answers from its store in one query. A request returns at
    most 25000 points; a batch that fills it is split in half and asked again.
    """
    from mlflow.utils.rest_utils import http_request

    creds = client._tracking_client.store.get_host_creds()  # no public accessor; MLflow's own REST helper
    by_key: dict[str, list[str]] = {}
    for r in runs:
        for k in r.metric_keys:
            by_key.setdefault(k, []).append(r.run_id)

    def fetch(job: tuple[str, list[str]]) -> list[tuple]:
        key, ids = job
        resp = http_request(creds, "/ajax-api/2.0/mlflow/metrics/get-history-bulk", "GET",
                            params={"run_id": ids, "metric_key": key, "max_results": _BULK_MAX_POINTS})
        resp.raise_for_status()
        points = resp.json().get("metrics", [])
        if len(points) >= _BULK_MAX_POINTS and len(ids) > 1:
            half = len(ids) // 2
            return fetch((key, ids[:half])) + fetch((key, ids[half:]))
        return [(m["run_id"], m["key"], int(m.get("step", 0)), int(m["timestamp"]), float(m["value"]))
                for m in points]

    jobs = [(k, ids[i:i + _BULK_RUNS]) for k, ids in by_key.items() for i in range(0, len(ids), _BULK_RUNS)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return [row for rows in pool.map(fetch, jobs) for row in rows]


def log_report(run_id: str, directory: str | Path, tracking_uri: str | None = None, digest: str | None = None) -> bool:
    """Upload a report folder as the run's `report/` artifacts, unless the run already holds the
    report with this content `digest` (tag `dispo.report_digest`); returns whether it uploaded."""
    client = _client(tracking_uri)
    if digest and client.get_run(run_id).data.tags.get(TAG_REPORT_DIGEST) == digest:
        return False
    client.log_artifacts(run_id, str(directory), "report")
    if digest:
        client.set_tag(run_id, TAG_REPORT_DIGEST, digest)
    return True


def ui_command(tracking_uri: str | None, host: str, port: int) -> list[str]:
    """`mlflow ui` on the store the runs were logged to (argv for subprocess)."""
    import sys

    uri = resolve_tracking_uri(tracking_uri)
    # One worker: a local UI serves one reader, and 4 (the default) start slowly on a small machine.
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
            "--workers", "1"]


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """Where the MLflow UI shows a run."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def latest_study_storage(tracking_uri: str | None = None) -> str | None:
    """The Optuna storage of the most recently started study (its parent run's `optuna.storage` tag)."""
    parents = _search(_reading_client(tracking_uri), f"tags.`{TAG_KIND}` = '{KIND_STUDY}'")
    return next((p.data.tags[TAG_OPTUNA_STORAGE] for p in parents if p.data.tags.get(TAG_OPTUNA_STORAGE)), None)
