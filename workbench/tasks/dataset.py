"""Training problems drawn from a data set: what a real-model run trains on.

`task: {name: dataset, source: SPEC}` takes any benchmark spec the registry knows (a hub
set by name, or `file:PATH?question=F&answer=F` for a JSONL/JSON/Parquet file, e.g. an
export of DAPO-Math-17k). Problems are drawn in seeded passes without replacement, so
every problem is seen once before any is seen twice.
"""

from __future__ import annotations

import random

from workbench.config import TaskConfig
from workbench.tasks.benchmarks import load_benchmark
from workbench.tasks.micro import Problem


class DatasetTask:
    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self.problems = load_benchmark(cfg.source, cfg)
        if not self.problems:
            raise ValueError(f"task.source {cfg.source!r} holds no problems")
        self._order: list[int] = []

    def train_batch(self, rng: random.Random | int, n: int) -> list[Problem]:
        """Next `n` problems: a fresh shuffled pass over the data set whenever one runs out."""
        if isinstance(rng, int):
            rng = random.Random(rng)
            self._order = []
        out = []
        while len(out) < n:
            if not self._order:
                self._order = list(range(len(self.problems)))
                rng.shuffle(self._order)
            out.append(self.problems[self._order.pop()])
        return out

    def eval_set(self) -> list[Problem]:
        """A data-set task has no held-out split of its own: evaluate on `eval.benchmarks`."""
        return []
