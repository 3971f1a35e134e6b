"""The policy snapshots lagged rollouts sample from, and only those.

A rollout drawn after `n` optimizer steps comes from the policy as it was after
`max(0, n - lag)` steps. Rollouts are drawn only at rollout boundaries, every `stride`
optimizer steps (`updates_per_rollout` when that count is fixed), so the only states ever
read are those whose step count plus `lag` is a multiple of `stride`. Keeping one state per
optimizer step would hold `lag + 1` full copies of the weights (65 at the default lag 64);
keeping only the ones a boundary will read holds `lag / stride + 1` (5). With a stride of 1
every step is kept, which is what a variable number of updates per rollout needs.
"""

from __future__ import annotations

import torch

State = dict[str, torch.Tensor]


def cpu_state(model: torch.nn.Module) -> State:
    """A detached CPU copy of the module's state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class SnapshotRing:
    """Snapshots keyed by the optimizer step count they were taken at."""

    def __init__(self, lag: int, stride: int):
        if lag < 1 or stride < 1:
            raise ValueError(f"lag ({lag}) and stride ({stride}) must be >= 1")
        self.lag, self.stride = lag, stride
        self.entries: dict[int, State] = {}

    def needed(self, count: int) -> bool:
        """Whether a rollout boundary (a multiple of `stride`) will read the state at `count`."""
        return count == 0 or (count + self.lag) % self.stride == 0

    def record(self, count: int, model: torch.nn.Module) -> None:
        """Called after every optimizer step (and once at step 0) with the number of steps taken."""
        if self.needed(count):
            self.entries[count] = cpu_state(model)
        # No boundary at or after `count` reads a state older than `count - lag`.
        for c in [c for c in self.entries if c < count - self.lag]:
            del self.entries[c]

    def rollout_state(self, count: int) -> State:
        """The state a rollout drawn after `count` optimizer steps samples from."""
        want = max(0, count - self.lag)
        if want not in self.entries:
            raise KeyError(f"no snapshot at optimizer step {want} (held: {sorted(self.entries)}); "
                           f"rollouts must be drawn every {self.stride} steps")
        return self.entries[want]

    def newest(self) -> State:
        """The state taken at the highest step count held."""
        return self.entries[max(self.entries)]

    def __len__(self) -> int:
        return len(self.entries)

    def state_dict(self) -> list[tuple[int, State]]:
        return sorted(self.entries.items(), key=lambda e: e[0])

    def load_state_dict(self, entries) -> None:
        self.entries = {int(c): s for c, s in entries}
