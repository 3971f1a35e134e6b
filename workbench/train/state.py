"""Everything one training step reads and changes, in one place: `RunState`.

A step of the loop is a function of the run's fixed parts (config, models, backend, task) and
this state; the checkpoint is this state written out (`to_checkpoint`) and read back
(`restore`), so what resume restores is exactly what a step can have changed. The dict keeps
the keys checkpoints have always had, so a run checkpointed before `RunState` existed resumes.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch

from workbench.metrics.collapse import SIGNALS as COLLAPSE_SIGNALS
from workbench.names import ENTROPY_MEAN
from workbench.train.snapshots import SnapshotRing, cpu_state


def _fresh_history() -> dict[str, list[float]]:
    return {ENTROPY_MEAN: [], **{k: [] for k in COLLAPSE_SIGNALS.values()}}


@dataclass
class RunState:
    """The trained policy and what moves with it; the global torch and python random streams are saved with it."""

    policy: torch.nn.Module
    opt: torch.optim.Optimizer
    snapshots: SnapshotRing | None  # the lagged states rollouts sample from (None without lag)
    task_rng: random.Random  # which problems a step draws
    shuffle: torch.Generator  # minibatch order
    step: int = 0  # rollout batches done
    updates: int = 0  # optimizer steps taken
    history: dict[str, list[float]] = field(default_factory=_fresh_history)  # what collapse detection reads
    last_eval: dict[str, float] = field(default_factory=dict)
    best_eval: dict[str, float] = field(default_factory=dict)
    collapse: tuple[str | None, int | None] = (None, None)  # kind and onset step, once flagged
    t0: float = field(default_factory=time.time)  # wall-clock start, moved back by a resumed run's elapsed time

    def to_checkpoint(self) -> dict:
        """What resume needs and nothing else.

        The snapshot taken at this very step is the policy itself, stored once (torch.save keeps
        one copy of an object referenced twice).
        """
        policy = cpu_state(self.policy)
        snaps = ([(c, policy if c == self.updates else st) for c, st in self.snapshots.state_dict()]
                 if self.snapshots is not None else [])
        return {"step": self.step, "updates": self.updates, "policy": policy, "opt": self.opt.state_dict(),
                "snapshots": snaps, "torch_rng": torch.get_rng_state(), "py_rng": random.getstate(),
                "task_rng": self.task_rng.getstate(), "shuffle": self.shuffle.get_state(), "history": self.history,
                "last_eval": self.last_eval, "best_eval": self.best_eval, "collapse": self.collapse,
                "elapsed": time.time() - self.t0}

    def restore(self, s: dict, updates_per_rollout: int) -> None:
        """Put a checkpoint back; `updates_per_rollout` dates checkpoints that did not count updates."""
        self.step = s["step"]
        self.policy.load_state_dict(s["policy"])
        self.opt.load_state_dict(s["opt"])
        self.updates = s.get("updates", self.step * updates_per_rollout)
        if self.snapshots is not None:
            snaps = s["snapshots"]
            if snaps and isinstance(snaps[0], dict):  # older checkpoints: one state per step, newest last
                snaps = list(zip(range(self.updates - len(snaps) + 1, self.updates + 1), snaps))
            self.snapshots.load_state_dict((c, st) for c, st in snaps if self.snapshots.needed(c))
        torch.set_rng_state(s["torch_rng"])
        random.setstate(s["py_rng"])
        self.task_rng.setstate(s["task_rng"])
        self.shuffle.set_state(s["shuffle"])
        self.history, self.last_eval, self.best_eval = s["history"], s["last_eval"], s["best_eval"]
        for k in COLLAPSE_SIGNALS.values():  # a checkpoint from before a criterion existed: unmeasured steps
            self.history.setdefault(k, [math.nan] * self.step)
        self.collapse = tuple(s["collapse"])
        self.t0 = time.time() - s["elapsed"]
