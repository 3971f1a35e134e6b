"""Collapse detection from a run's per-step series.

DISPO's two failure modes (DESIGN.md section 1) each leave one signal:
- repetition: `response/repetition_rate` stays at or above `repetition_threshold`;
- length: `response/length_mean` stays below `length_ratio` times its mean over the first
  `BASELINE_STEPS` steps.
A run is flagged when a signal stays past its threshold for `patience` consecutive steps;
the onset is the first step of that streak.

The trainer calls `detect_collapse` online after every step and the report calls it on the
stored history, so the verdict must depend on a prefix of the series only: the length
baseline is fixed once its window is full (no length verdict before), and the verdict is the
streak that completes first. Called on any longer history, it returns the same verdict the
trainer tagged the run with. A NaN (nothing measured that step) breaks a streak.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from workbench.config import CollapseConfig

BASELINE_STEPS = 5  # steps whose mean length is the reference for a length collapse
KINDS = ("repetition", "length")


class CollapseVerdict(NamedTuple):
    kind: str | None  # "repetition" | "length" | None
    onset_step: int | None  # first step of the streak that triggered the verdict


def detect_collapse(steps: Sequence[int], repetition_rate: Sequence[float], length_mean: Sequence[float],
                    cfg: CollapseConfig) -> CollapseVerdict:
    """First collapse in a run's history, or `CollapseVerdict(None, None)`.

    Args:
        steps: (N,) training step of each entry, increasing.
        repetition_rate: (N,) `response/repetition_rate` per step (NaN where missing); may be
            empty when the run did not log it.
        length_mean: (N,) `response/length_mean` per step (NaN where missing); may be empty.
        cfg: thresholds and patience.

    >>> cfg = CollapseConfig(repetition_threshold=0.5, patience=2)
    >>> detect_collapse([1, 2, 3, 4], [0.1, 0.6, 0.7, 0.8], [], cfg)
    CollapseVerdict(kind='repetition', onset_step=2)
    """
    n = len(steps)
    for name, series in (("repetition_rate", repetition_rate), ("length_mean", length_mean)):
        if len(series) not in (0, n):
            raise ValueError(f"{name} has {len(series)} values but steps has {n}; pass one value per step or none")
    rep_hit = [_is_num(x) and x >= cfg.repetition_threshold for x in repetition_rate]
    len_hit = _length_hits(length_mean, cfg.length_ratio)
    candidates = []
    for kind, hits in (("repetition", rep_hit), ("length", len_hit)):
        done = _streak_end(hits, cfg.patience)
        if done is not None:
            candidates.append((done, KINDS.index(kind), kind))
    if not candidates:
        return CollapseVerdict(None, None)
    done, _, kind = min(candidates)  # the streak completed first; repetition wins a tie
    return CollapseVerdict(kind, int(steps[done - cfg.patience + 1]))


def length_baseline(length_mean: Sequence[float]) -> float | None:
    """Mean of the first `BASELINE_STEPS` lengths (NaNs skipped); None until that window is full."""
    if len(length_mean) < BASELINE_STEPS:
        return None
    window = [x for x in length_mean[:BASELINE_STEPS] if _is_num(x)]
    return sum(window) / len(window) if window else None


def _length_hits(length_mean: Sequence[float], ratio: float) -> list[bool]:
    base = length_baseline(length_mean)
    if base is None or base <= 0:
        return [False] * len(length_mean)
    limit = ratio * base
    return [i >= BASELINE_STEPS and _is_num(x) and x < limit for i, x in enumerate(length_mean)]


def _streak_end(hits: list[bool], patience: int) -> int | None:
    """Index where the first run of `patience` consecutive hits completes."""
    run = 0
    for i, hit in enumerate(hits):
        run = run + 1 if hit else 0
        if run >= patience:
            return i
    return None


def _is_num(x: float | None) -> bool:
    return x is not None and not math.isnan(x)
