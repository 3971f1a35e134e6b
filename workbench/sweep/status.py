"""What the storage alone says about a study (`dispo-wb sweep status`): one row per trial, the best."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import optuna
from optuna.trial import TrialState

from workbench.services.credentials import redact
from workbench.sweep.storage import load_study

DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # the trial states that count towards n_trials


class TrialRow(NamedTuple):
    number: int
    state: str
    params: dict[str, Any]
    values: list[float] | None
    collapse: str | None  # every collapsed seed: "seed 0: accuracy, step 11; seed 2: runaway, step 6"
    run_id: str | None  # the trial's MLflow run
    duration_s: float | None
    note: str  # retry of which trial, why it failed or was pruned


class StudyStatus(NamedTuple):
    name: str
    storage: str
    directions: list[str]
    n_trials: int | None
    counts: dict[str, int]
    rows: list[TrialRow]
    best: list[int]  # best trial (one direction) or Pareto front (several)
    parent_run_id: str | None


def study_status(target: str | Path, storage: str | None = None) -> StudyStatus:
    """What the storage alone says about a study: one row per trial, and the best trial(s)."""
    ostudy, url = load_study(target, storage)
    rows = []
    for t in ostudy.get_trials(deepcopy=False):
        a = t.user_attrs
        note = (f"retry of {a['retry_of']}" if "retry_of" in a else "") or a.get("failure", "")
        if "look" in a:  # a sequential claims study: the trial trains one look's seeds of its arm
            note = "; ".join(x for x in (f"look {a['look'] + 1}", note) if x)
        rows.append(TrialRow(t.number, t.state.name, dict(t.params), list(t.values) if t.values else None,
                             collapsed_seeds(a), a.get("mlflow_run_id"),
                             t.duration.total_seconds() if t.duration else None, note))
    try:
        best = [t.number for t in ostudy.best_trials] if len(ostudy.directions) > 1 else [ostudy.best_trial.number]
    except ValueError:  # no COMPLETE trial yet
        best = []
    attrs = ostudy.user_attrs
    labels = attrs.get("directions") or [d.name.lower() for d in ostudy.directions]
    return StudyStatus(ostudy.study_name, redact(url), labels, attrs.get("n_trials"), counts(ostudy), rows, best,
                       attrs.get("mlflow_parent_run_id"))


def collapsed_seeds(attrs: dict[str, Any]) -> str | None:
    """Every collapsed seed of a trial, in seed order, from its per-seed record; the trial's own flag without one.

    The trial's `collapse` attribute names only the last seed that collapsed (a study that keeps running
    after a collapse overwrites it), so a trial with three collapsed seeds would show one.
    """
    named = []
    for seed, run in sorted((attrs.get("seeds") or {}).items(), key=lambda kv: int(kv[0])):
        if run.get("collapse"):
            step = run.get("collapse_step")
            named.append(f"seed {seed}: {run['collapse']}{'' if step is None else f', step {step}'}")
    return "; ".join(named) if named else attrs.get("collapse")


def counts(ostudy: optuna.Study) -> dict[str, int]:
    """Trials per Optuna state name."""
    out: dict[str, int] = {}
    for t in ostudy.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out
