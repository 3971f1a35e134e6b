"""What a training run returns, and the shape of a function that trains one.

Light enough for sweep workers and test fakes to import without torch. The sweep calls any
`TrainFn` (the local trainer, an engine's job launcher, a test fake) in a trial process and
reads back its `RunResult`, so the function must be picklable by reference (module level).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from workbench.config import RunConfig

OnEval = Callable[[int, dict[str, float]], bool]  # (step, eval metrics) -> stop the run now?


@dataclass(frozen=True)
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


class TrainFn(Protocol):
    """Trains one run of `config` to its end and says how it ended.

    `parent_run_id` nests the run's MLflow run, `extra_tags` are set on it, and `on_eval` is
    called after each evaluation (True stops the run). A function whose module is light may
    carry a `preload` attribute: the heavy module its training processes should import once.
    """

    def __call__(self, config: RunConfig, *, tracking_uri: str | None = None, parent_run_id: str | None = None,
                 extra_tags: dict[str, str] | None = None, on_eval: OnEval | None = None,
                 progress: bool = True) -> RunResult: ...
