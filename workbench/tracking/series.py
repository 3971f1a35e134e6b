"""What one stored run's metric series say: a curve from step 1, its first, last and best values.

Plain functions over `RunRecord`s (filled by `load_histories`), read by the report and by a
sequential claims sweep deciding which arms get more seeds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from workbench.names import TRAIN_ACCURACY
from workbench.tracking.queries import RunRecord


class Curve(NamedTuple):
    steps: np.ndarray  # (N,) int
    values: np.ndarray  # (N,) float


def curve(run: RunRecord, key: str) -> Curve | None:
    """A training-metric series from step 1 (step 0 is the eval before any update); None when not logged."""
    s = run.metrics.get(key)
    if s is None or not len(s.steps):
        return None
    keep = s.steps >= 1
    return Curve(s.steps[keep], s.values[keep])


def final_value(run: RunRecord, key: str | None) -> float:
    s = run.metrics.get(key) if key else None
    ok = s.values[~np.isnan(s.values)] if s is not None else np.array([])
    return float(ok[-1]) if len(ok) else math.nan


def start_value(run: RunRecord, key: str | None) -> float:
    """The first logged value (for eval keys: step 0, before any update)."""
    s = run.metrics.get(key) if key else None
    ok = s.values[~np.isnan(s.values)] if s is not None else np.array([])
    return float(ok[0]) if len(ok) else math.nan


def best_value(run: RunRecord, key: str | None) -> float:
    s = run.metrics.get(key) if key else None
    return float(np.nanmax(s.values)) if s is not None and not np.isnan(s.values).all() else math.nan


def accuracy_key(runs: Sequence[RunRecord]) -> str | None:
    """The eval accuracy most runs logged (`eval/<benchmark>/accuracy`), else train accuracy."""
    counts: dict[str, int] = {}
    for r in runs:
        for k in r.metrics:
            if re.fullmatch(r"eval/[a-z0-9_.]+/accuracy", k):
                counts[k] = counts.get(k, 0) + 1
    if counts:
        return max(sorted(counts), key=counts.get)
    return TRAIN_ACCURACY if any(TRAIN_ACCURACY in r.metrics for r in runs) else None
