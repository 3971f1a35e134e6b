"""A claim measure's value per arm and seed, read off a study's stored training runs.

The report computes its verdicts from these, and a sequential claims sweep uses the same
numbers between looks to decide which arms get the next seeds, so both always agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from workbench.names import ENTROPY_MEAN, ENTROPY_PUSH, FINISHED, TAG_ARM, TAG_COLLAPSE, TAG_SEED, regime_key
from workbench.tracking import RunRecord
from workbench.tracking.series import curve, final_value


def run_measure(run: RunRecord, measure: str, acc_key: str | None) -> float:
    """One run's value of a claim measure (see `workbench.sweep.claims.MEASURES`); NaN when it cannot be read."""
    if measure.startswith("collapse:"):
        return float(run.tags.get(TAG_COLLAPSE) == measure.removeprefix("collapse:"))
    if measure == "final_accuracy":
        return final_value(run, acc_key)
    if measure == "entropy_late":
        c = curve(run, ENTROPY_MEAN)
        if c is None:
            return math.nan
        late = c.values[c.steps > c.steps.max() * 2 / 3]
        late = late[~np.isnan(late)]
        return float(late.mean()) if len(late) else math.nan
    if measure.startswith("entropy_push:"):
        c = curve(run, regime_key(measure.removeprefix("entropy_push:"), ENTROPY_PUSH))
        pushes = c.values[~np.isnan(c.values)] if c is not None else np.array([])
        return float(pushes.mean()) if len(pushes) else math.nan
    raise ValueError(f"unknown measure {measure!r}")


def measures_by_arm(runs: Sequence[RunRecord], measure: str, acc_key: str | None) -> dict[str, dict[int, float]]:
    """arm -> seed -> measure, over runs that carry both tags; finished runs only."""
    out: dict[str, dict[int, float]] = {}
    for run in runs:
        arm, seed = run.tags.get(TAG_ARM), run.tags.get(TAG_SEED)
        if arm is None or seed is None or run.status != FINISHED:
            continue
        out.setdefault(arm, {})[int(seed)] = run_measure(run, measure, acc_key)
    return out
