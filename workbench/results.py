"""What a training run returns, in a module light enough for sweep workers and test fakes to import without torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class RunResult:
    run_id: str
    status: str  # FINISHED | FAILED | KILLED | STOPPED (ended early by on_eval or a collapse stop)
    steps_done: int
    wall_s: float
    final_eval: dict[str, float] = field(default_factory=dict)
    best_eval: dict[str, float] = field(default_factory=dict)
    collapse: str | None = None
    collapse_step: int | None = None
    entropy_first: float = math.nan
    entropy_last: float = math.nan
    reason: str | None = None
