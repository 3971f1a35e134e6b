"""What the store holds, as plain data: runs found by name or id, their tags, params and series.

`resolve_target` turns what a user typed (a run id, a study, a run or an experiment name)
into `RunRecord`s; `histories.load_histories` fills their full metric series. Used by the
report, `--resume` and the engines; nothing here writes to a run.
"""

from __future__ import annotations

import difflib
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench.names import KIND_STUDY, KIND_TRIAL, TAG_KIND, TAG_OPTUNA_STORAGE, TAG_PARENT, TAG_SEED, TAG_STUDY, TAG_TRIAL
from workbench.tracking.store import open_client, reading_client, search_runs

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


def run_record(run) -> RunRecord:
    info = run.info
    return RunRecord(run_id=info.run_id, name=info.run_name or info.run_id, experiment_id=info.experiment_id,
                     status=info.status, start_ms=info.start_time or 0, end_ms=info.end_time,
                     params=dict(run.data.params), tags=dict(run.data.tags),
                     metric_keys=tuple(sorted(run.data.metrics)))


def runs_by_id(run_ids: list[str], tracking_uri: str | None = None) -> list[RunRecord]:
    """These runs with their full metric series, in the order given (a sweep judging its own trials' runs)."""
    from workbench.tracking.histories import load_histories

    client = reading_client(tracking_uri)
    runs = [run_record(client.get_run(i)) for i in run_ids]
    load_histories(runs, tracking_uri)
    return runs


def run_info(run_id: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Status, tags and params of a run, as plain dicts (used to resume a run)."""
    run = open_client(tracking_uri).get_run(run_id)
    return {"status": run.info.status, "tags": dict(run.data.tags), "params": dict(run.data.params),
            "experiment_id": run.info.experiment_id, "name": run.info.run_name}


def metric_histories(run_id: str, keys: list[str], tracking_uri: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """Full (step, value) series of a run's metrics, step-sorted (benchmarks and checks)."""
    client = open_client(tracking_uri)
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def metric_keys(run_id: str, tracking_uri: str | None = None) -> list[str]:
    """Every metric key a run has (engine runs: to translate what the engine logged)."""
    return sorted(open_client(tracking_uri).get_run(run_id).data.metrics)


def download_text(run_id: str, artifact_file: str, tracking_uri: str | None = None) -> str:
    with tempfile.TemporaryDirectory() as d:
        path = open_client(tracking_uri).download_artifacts(run_id, artifact_file, d)
        return Path(path).read_text()


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
    client = reading_client(tracking_uri)
    notes: list[str] = []
    run = _get_run(client, target) if len(target) == _RUN_ID_LEN else None
    if run is not None and run.data.tags.get(TAG_KIND) == KIND_STUDY:
        target = run.data.tags.get(TAG_STUDY, target)
        run = None
    if run is None:
        parents = search_runs(client, f"tags.`{TAG_KIND}` = '{KIND_STUDY}' and tags.`{TAG_STUDY}` = {_quote(target)}")
        if parents:
            return _study_target(client, target, parents)
        named = search_runs(client, f"attributes.run_name = {_quote(target)}")
        if named:
            run = named[0]
            if len(named) > 1:
                notes.append(f"{len(named)} runs are named {target}; showing the latest ({run.info.run_id}); "
                             "pass a run id for another")
    if run is not None and run.data.tags.get(TAG_KIND) == KIND_TRIAL:
        # A sweep trial's run holds its value; its training runs (one per seed) sit beneath it.
        seeds = [run_record(r) for r in search_runs(client, f"tags.`{TAG_PARENT}` = '{run.info.run_id}'",
                                             [run.info.experiment_id])]
        seeds = sorted((r for r in seeds if r.metric_keys), key=lambda r: (r.start_ms, _int(r.tags.get(TAG_SEED))))
        return TargetRuns("trial", run.info.run_name, seeds, run.info.run_id, run.info.experiment_id, notes=notes)
    if run is not None:
        rec = run_record(run)
        return TargetRuns("run", rec.name, [rec], rec.run_id, rec.experiment_id, notes=notes)
    exp = client.get_experiment_by_name(target)
    if exp is not None:
        runs = [run_record(r) for r in search_runs(client, "", [exp.experiment_id])]
        parents = {r.parent_run_id for r in runs}  # study and trial runs: summaries, not training curves
        runs = sorted((r for r in runs if r.metric_keys and r.run_id not in parents), key=lambda r: r.start_ms)
        return TargetRuns("experiment", target, runs, None, exp.experiment_id, notes=notes)
    raise _unknown(client, target)


def run_tags(run_id: str, tracking_uri: str | None = None) -> dict[str, str]:
    """A run's tags (e.g. a study's parent run: its declared claims)."""
    return dict(reading_client(tracking_uri).get_run(run_id).data.tags)


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
    everything = search_runs(client, "", [parent.info.experiment_id])
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
    runs = [run_record(r) for r in found.values() if r.data.metrics and r.info.run_id not in children]
    runs.sort(key=lambda r: (_int(r.tags.get(TAG_TRIAL)), r.start_ms, r.name))
    return TargetRuns("study", name, runs, parent.info.run_id, parent.info.experiment_id,
                      study_storage=parent.data.tags.get(TAG_OPTUNA_STORAGE), notes=notes)


def _int(text: str | None) -> float:
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.inf


def _unknown(client, target: str):
    from mlflow.entities import ViewType

    from workbench.errors import UserError

    experiments = [e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    runs = search_runs(client, "")
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


def latest_study_storage(tracking_uri: str | None = None) -> str | None:
    """The Optuna storage of the most recently started study (its parent run's `optuna.storage` tag)."""
    parents = search_runs(reading_client(tracking_uri), f"tags.`{TAG_KIND}` = '{KIND_STUDY}'")
    return next((p.data.tags[TAG_OPTUNA_STORAGE] for p in parents if p.data.tags.get(TAG_OPTUNA_STORAGE)), None)
