"""What a report reads off a run: curves, final accuracy, bounds, collapse, seed groups.

Plain functions over `tracking.RunRecord`; the figure modules and the page build on them.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from workbench.metrics.collapse import SIGNALS, Criterion, assess, verdict
from workbench.config import CollapseConfig
from workbench.names import TAG_COLLAPSE, TAG_COLLAPSE_STEP, TAG_SEED, TAG_STUDY, TAG_TRIAL
from workbench.params import DISPO_BOUNDS as BOUNDS  # the figure modules read both here too
from workbench.params import bound_off
from workbench.tracking import RunRecord
from workbench.tracking.series import Curve, accuracy_key, best_value, curve, final_value, start_value  # noqa: F401 (the report's surface)


class Marker(NamedTuple):
    kind: str  # one of workbench.metrics.collapse.KINDS
    step: int
    source: str  # "run tag" | "detected"


def _float(text: str | None) -> float:
    try:
        return float(text)  # "inf" parses; a bound switched off stays inf
    except (TypeError, ValueError):
        return math.nan


def run_bounds(run: RunRecord) -> dict[str, float]:
    """The four regime bounds a run trained with; PPO-family eps_low/eps_high map onto both signs.

    Params hold only the bounds a config overrode; the rest are the objective's defaults
    (read from the registry only when needed: it imports torch). NaN for an objective the
    workbench does not know.
    """
    name = run.params.get("objective.name")
    p = {k.removeprefix("objective.params."): _float(v) for k, v in run.params.items()
         if k.startswith("objective.params.")}
    if name and not (all(b in p for b in BOUNDS) or all(k in p for k in ("eps_low", "eps_high"))):
        p = {**_objective_defaults(name), **p}
    if any(b in p for b in BOUNDS):
        return {b: p.get(b, math.nan) for b in BOUNDS}
    lo, hi = p.get("eps_low", math.nan), p.get("eps_high", math.nan)
    return {"eps_pos_up": hi, "eps_pos_down": lo, "eps_neg_up": hi, "eps_neg_down": lo}


@functools.lru_cache(maxsize=None)
def _objective_defaults(name: str) -> dict[str, float]:
    try:
        from workbench.core.objectives import describe_objectives
    except ImportError:
        return {}
    found = next((o["params"] for o in describe_objectives() if o["name"] == name), {})
    return {k: float(v) for k, v in found.items() if not isinstance(v, bool)}


def collapse_config(run: RunRecord) -> CollapseConfig:
    fields = {k.removeprefix("collapse."): v for k, v in run.params.items() if k.startswith("collapse.")}
    try:
        return CollapseConfig(**{k: v for k, v in fields.items() if k in CollapseConfig.model_fields and k != "stop"})
    except ValueError:
        return CollapseConfig()


def aligned(run: RunRecord, keys: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Train steps logged by any of `keys`, with each key's values on them (NaN where absent)."""
    curves = [curve(run, k) for k in keys]
    steps = np.unique(np.concatenate([c.steps for c in curves if c is not None] or [np.array([], np.int64)]))
    out = []
    for c in curves:
        v = np.full(len(steps), np.nan)
        if c is not None:
            v[np.searchsorted(steps, c.steps)] = c.values
        out.append(v)
    return steps, out


def collapse_criteria(run: RunRecord) -> tuple[Criterion, ...]:
    """Each collapse criterion's state on the run's stored series (the trainer's detector, same thresholds)."""
    keys = tuple(SIGNALS.values())
    steps, values = aligned(run, keys)
    return assess(steps.tolist(), {k: v.tolist() for k, v in zip(keys, values)}, collapse_config(run))


def collapse_marker(run: RunRecord) -> Marker | None:
    """The run's `collapse` tag when the trainer set one, else detection on its stored series."""
    kind, step = run.tags.get(TAG_COLLAPSE), run.tags.get(TAG_COLLAPSE_STEP)
    if kind and kind != "none" and step and step.lstrip("-").isdigit():
        return Marker(kind, int(step), "run tag")
    found = verdict(collapse_criteria(run))
    return Marker(found.kind, found.onset_step, "detected") if found.kind else None


def run_wall_s(run: RunRecord) -> float:
    if run.end_ms and run.start_ms:
        return (run.end_ms - run.start_ms) / 1000
    last = [float(s.elapsed_s.max()) for s in run.metrics.values() if len(s.elapsed_s)]
    return max(last) if last else math.nan


def run_label(run: RunRecord, with_study: bool = False) -> str:
    """"trial 3 seed 1" for a sweep's run (prefixed by its study when runs of several are shown), else its name."""
    trial, seed = run.tags.get(TAG_TRIAL), run.tags.get(TAG_SEED) or run.params.get("seed")
    if trial is None:
        return run.name
    study = f"{run.tags.get(TAG_STUDY, '?')} " if with_study else ""
    return f"{study}trial {trial}" + (f" seed {seed}" if seed is not None else "")


def several_studies(runs: Sequence[RunRecord]) -> bool:
    return len({r.tags[TAG_STUDY] for r in runs if TAG_STUDY in r.tags}) > 1


class Group(NamedTuple):
    label: str
    runs: tuple[RunRecord, ...]


_NOT_CONFIG = {"seed", "run_name"}


def group_runs(runs: Sequence[RunRecord]) -> list[Group]:
    """Seeds of one configuration together: a sweep trial's runs, or runs whose params differ only in seed."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        if TAG_TRIAL in r.tags:
            key: tuple = ("trial", r.tags.get(TAG_STUDY), r.tags[TAG_TRIAL])
        else:
            key = ("params", tuple(sorted((k, v) for k, v in r.params.items() if k not in _NOT_CONFIG)))
        groups.setdefault(key, []).append(r)
    out, with_study = [], several_studies(runs)
    for key, members in groups.items():
        head = members[0]
        what = config_text(head)
        if key[0] == "trial":
            label = f"{run_label(head, with_study).split(' seed ')[0]}: {what}"
        else:
            label = what if len(members) > 1 else f"{head.name}: {what}"
        out.append(Group(label + (f" ({len(members)} seeds)" if len(members) > 1 else ""), tuple(members)))
    return out


def config_text(run: RunRecord) -> str:
    b = run_bounds(run)
    if all(math.isnan(v) for v in b.values()):
        return run.params.get("objective.name", "unknown objective")
    short = " ".join(f"{k.removeprefix('eps_')}={fmt_bound(b[k], k)}" for k in BOUNDS)
    return f"{run.params.get('objective.name', '?')} {short}"


def fmt_bound(v: float, name: str = "") -> str:
    if math.isnan(v):
        return "?"
    if bound_off(name, v):
        return "off"
    return f"{v:g}"


def varied_bounds(runs: Sequence[RunRecord]) -> tuple[str, ...]:
    """The bounds whose values differ across `runs` (the ones a label must name)."""
    values = [run_bounds(r) for r in runs]
    return tuple(b for b in BOUNDS if len({fmt_bound(v[b], b) for v in values}) > 1)


def bound_suffix(run: RunRecord, bounds: Sequence[str]) -> str:
    """": neg_up=0.01 neg_down=off" for the bounds that vary among the runs shown; "" when none do."""
    if not bounds:
        return ""
    b = run_bounds(run)
    return ": " + " ".join(f"{k.removeprefix('eps_')}={fmt_bound(b[k], k)}" for k in bounds)


def length_cap(run: RunRecord) -> float | None:
    """`rollout.max_new_tokens`: where responses are cut (and counted as truncated)."""
    v = _float(run.params.get("rollout.max_new_tokens"))
    return None if math.isnan(v) else v


_SAME_CONFIG = {"seed", "run_name", "experiment", "threads", "checkpoint_every", "sample_every"}


def confounders(runs: Sequence[RunRecord], searched: Sequence[str] = ()) -> dict[str, tuple[str, ...]]:
    """Params (other than the bounds, the seed and `searched` names) whose values differ across `runs`.

    A difference in accuracy between such runs cannot be credited to the bounds alone.
    """
    keys = {k for r in runs for k in r.params}
    skip = {f"objective.params.{b}" for b in BOUNDS} | {"objective.params.eps_low", "objective.params.eps_high"}
    out = {}
    for k in sorted(keys):
        if k in skip or k in _SAME_CONFIG or k.rsplit(".", 1)[-1] in searched or k in searched:
            continue
        values = tuple(dict.fromkeys(r.params.get(k, "(unset)") for r in runs))
        if len(values) > 1:
            out[k] = values
    return out
