"""Collapse detection from a run's per-step series: one detector for the trainer and the report.

Four criteria, each read off one logged series (docs/design.md#metrics), each stated in words by
`criterion_text` so that the report prints exactly what was tested:
- repetition: `response/repetition_rate` >= `repetition_threshold` (outputs loop; the DISPO
  paper's failure of a too tight `eps_neg_up`);
- length (vanishing length): `response/length_mean` < `length_ratio` x its mean over the first
  `BASELINE_STEPS` steps (responses shrink towards nothing; a too tight `eps_neg_down`);
- runaway (runaway length): `response/truncated_frac` >= `truncation_threshold`, i.e. most
  responses run into the length cap, which is where a repetition collapse sends them even
  before the n-gram rate passes its threshold;
- accuracy (accuracy crash): `train/accuracy` < `accuracy_ratio` x its mean over the first
  `BASELINE_STEPS` steps; judged only when that mean is at least `accuracy_min_baseline`
  (a policy that never solved anything cannot crash).
A criterion is met when its signal stays past the limit for `patience` consecutive steps; its
onset is the first step of that streak. The run's verdict is the criterion met first (ties in
the order above).

The trainer calls `detect_collapse` online after every step and the report calls it on the
stored history, so every criterion depends on a prefix of the series only: a baseline is fixed
once its window is full (no verdict from it before). Called on any longer history, it returns
the verdict the trainer tagged the run with. A NaN (nothing measured that step) breaks a streak.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from workbench.config import CollapseConfig
from workbench.names import LENGTH_MEAN, REPETITION_RATE, TRAIN_ACCURACY, TRUNCATED_FRAC

BASELINE_STEPS = 5  # steps whose mean is the reference for a relative (length, accuracy) criterion
KINDS = ("repetition", "length", "runaway", "accuracy")
SIGNALS = {"repetition": REPETITION_RATE, "length": LENGTH_MEAN, "runaway": TRUNCATED_FRAC, "accuracy": TRAIN_ACCURACY}
TITLES = {"repetition": "repetition", "length": "vanishing length", "runaway": "runaway length",
          "accuracy": "accuracy crash"}


class CollapseVerdict(NamedTuple):
    kind: str | None  # one of KINDS, or None
    onset_step: int | None  # first step of the streak that triggered the verdict


class Criterion(NamedTuple):
    kind: str  # one of KINDS
    text: str  # the criterion in words, with the run's thresholds
    state: str  # "collapsed" | "ok" | "not logged" | "no baseline"
    onset_step: int | None  # first step of the first full streak (state "collapsed")
    longest: int  # longest streak of steps past the limit
    worst: float | None  # the value furthest past the limit's side (max or min), after any baseline window
    limit: float | None  # the absolute limit the series was compared with (None without a baseline)
    done_index: int | None  # index where the first full streak completed (for ordering verdicts)


def criterion_text(kind: str, cfg: CollapseConfig) -> str:
    p = f"for {cfg.patience} consecutive steps"
    return {
        "repetition": f"repetition rate >= {cfg.repetition_threshold:g} {p}",
        "length": f"mean length < {cfg.length_ratio:g} x its first-{BASELINE_STEPS}-step mean {p}",
        "runaway": f"truncated share >= {cfg.truncation_threshold:g} (responses at the length cap) {p}",
        "accuracy": f"train accuracy < {cfg.accuracy_ratio:g} x its first-{BASELINE_STEPS}-step mean {p} "
                    f"(judged when that mean >= {cfg.accuracy_min_baseline:g})",
    }[kind]


def assess(steps: Sequence[int], series: Mapping[str, Sequence[float]], cfg: CollapseConfig) -> tuple[Criterion, ...]:
    """Each criterion's state on a run's history.

    Args:
        steps: (N,) training step of each entry, increasing.
        series: metric key -> (N,) values (NaN where missing); a key absent or empty was not logged.
        cfg: thresholds and patience.
    """
    n = len(steps)
    out = []
    for kind in KINDS:
        found = series.get(SIGNALS[kind])
        values = [] if found is None else [float(x) for x in found]
        if len(values) not in (0, n):
            raise ValueError(f"{SIGNALS[kind]} has {len(values)} values but steps has {n}; pass one value per step or none")
        out.append(_criterion(kind, steps, values, cfg))
    return tuple(out)


def _criterion(kind: str, steps: Sequence[int], values: list[float], cfg: CollapseConfig) -> Criterion:
    text = criterion_text(kind, cfg)
    if not any(_is_num(x) for x in values):
        return Criterion(kind, text, "not logged", None, 0, None, None, None)
    start, above = 0, kind in ("repetition", "runaway")
    if kind in ("repetition", "runaway"):
        limit = cfg.repetition_threshold if kind == "repetition" else cfg.truncation_threshold
    else:
        base = baseline(values)
        floor = cfg.accuracy_min_baseline if kind == "accuracy" else 0.0
        if base is None or base <= 0 or base < floor:
            return Criterion(kind, text, "no baseline", None, 0, None, None, None)
        limit, start = (cfg.length_ratio if kind == "length" else cfg.accuracy_ratio) * base, BASELINE_STEPS
    hits = [i >= start and _is_num(x) and (x >= limit if above else x < limit) for i, x in enumerate(values)]
    seen = [x for x in values[start:] if _is_num(x)]
    worst = (max(seen) if above else min(seen)) if seen else None
    done = _streak_end(hits, cfg.patience)
    onset = int(steps[done - cfg.patience + 1]) if done is not None else None
    return Criterion(kind, text, "collapsed" if done is not None else "ok", onset, _longest(hits), worst, limit, done)


def verdict(criteria: Sequence[Criterion]) -> CollapseVerdict:
    """The criterion met first; KINDS order breaks a tie."""
    met = [(c.done_index, KINDS.index(c.kind), c) for c in criteria if c.done_index is not None]
    if not met:
        return CollapseVerdict(None, None)
    c = min(met)[2]
    return CollapseVerdict(c.kind, c.onset_step)


def detect_collapse(steps: Sequence[int], series: Mapping[str, Sequence[float]], cfg: CollapseConfig) -> CollapseVerdict:
    """First collapse in a run's history, or `CollapseVerdict(None, None)`.

    >>> cfg = CollapseConfig(repetition_threshold=0.5, patience=2)
    >>> detect_collapse([1, 2, 3, 4], {"response/repetition_rate": [0.1, 0.6, 0.7, 0.8]}, cfg)
    CollapseVerdict(kind='repetition', onset_step=2)
    """
    return verdict(assess(steps, series, cfg))


def baseline(values: Sequence[float]) -> float | None:
    """Mean of the first `BASELINE_STEPS` values (NaNs skipped); None until that window is full."""
    if len(values) < BASELINE_STEPS:
        return None
    window = [x for x in values[:BASELINE_STEPS] if _is_num(x)]
    return sum(window) / len(window) if window else None


length_baseline = baseline  # the report's length guide line


def _streak_end(hits: list[bool], patience: int) -> int | None:
    """Index where the first run of `patience` consecutive hits completes."""
    run = 0
    for i, hit in enumerate(hits):
        run = run + 1 if hit else 0
        if run >= patience:
            return i
    return None


def _longest(hits: list[bool]) -> int:
    best = run = 0
    for hit in hits:
        run = run + 1 if hit else 0
        best = max(best, run)
    return best


def _is_num(x: float | None) -> bool:
    return x is not None and not math.isnan(x)
