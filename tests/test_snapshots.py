"""The snapshot ring hands every rollout the state a full per-step ring would, holding far fewer.

Run: pytest tests/test_snapshots.py
"""

from collections import deque

import pytest
import torch

from workbench.train.snapshots import SnapshotRing


@pytest.mark.parametrize("lag,stride", [(64, 16), (4, 4), (4, 16), (5, 3), (1, 1), (30, 16)])
def test_ring_reads_what_a_full_ring_reads(lag, stride):
    model = torch.nn.Linear(2, 1)
    full = deque([model.weight.detach().clone()], maxlen=lag + 1)  # one state per optimizer step
    ring = SnapshotRing(lag, stride)
    ring.record(0, model)
    count, held = 0, []
    for _ in range(12):  # rollout boundaries
        want = full[0]
        assert torch.equal(ring.rollout_state(count)["weight"], want)
        for _ in range(stride):
            with torch.no_grad():
                model.weight.add_(1.0)
            count += 1
            full.append(model.weight.detach().clone())
            ring.record(count, model)
            held.append(len(ring))
    assert max(held) <= lag // stride + 2


def test_ring_at_the_default_lag_holds_five_states():
    model = torch.nn.Linear(2, 1)
    ring = SnapshotRing(64, 16)
    for count in range(0, 16 * 12 + 1):  # up to a rollout boundary
        ring.record(count, model)
    assert sorted(ring.entries) == [128, 144, 160, 176, 192]


def test_reading_off_a_boundary_names_what_is_held():
    model = torch.nn.Linear(2, 1)
    ring = SnapshotRing(4, 4)
    for count in range(0, 9):
        ring.record(count, model)
    with pytest.raises(KeyError, match="every 4 steps"):
        ring.rollout_state(7)
