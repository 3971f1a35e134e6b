"""Group advantages and reward shaping. Run: pytest tests/test_advantages.py"""

import pytest
import torch

from workbench.core.advantages import group_advantages, overlong_penalty, zero_adv_groups
from workbench.metrics.responses import repetition_rate, response_metrics


def test_grpo_normalises_within_each_group():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    a = group_advantages(r, 4, "grpo")
    g0 = r[:4]
    assert torch.allclose(a[:4], (g0 - g0.mean()) / (g0.std() + 1e-6))
    assert torch.equal(a[4:], torch.zeros(4))  # all-equal group teaches nothing


def test_dr_grpo_only_centres():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert torch.allclose(group_advantages(r, 4, "dr_grpo"), torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_zero_adv_groups_and_bad_input():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0])
    assert zero_adv_groups(r, 2).tolist() == [True, False]
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.ones(5), 2)
    with pytest.raises(ValueError, match="grpo, dr_grpo"):
        group_advantages(torch.ones(4), 2, "rloo")


def test_overlong_penalty_ramps_to_factor():
    p = overlong_penalty(torch.tensor([10, 40, 44, 48]), max_new_tokens=48, buffer=8, factor=1.0)
    assert torch.allclose(p, torch.tensor([0.0, 0.0, -0.5, -1.0]))


def test_repetition_and_response_metrics():
    assert repetition_rate([5] * 10) == pytest.approx(1 - 0.5 * (1 / 8 + 1 / 7))
    m = response_metrics([[1, 2, 3, 4], [1, 2]], [True, False], ["stop", "length"])
    assert m["response/length_mean"] == 3 and m["response/length_correct"] == 4
    assert m["response/length_incorrect"] == 2 and m["response/truncated_frac"] == 0.5
    assert m["response/repetition_rate"] == 0.0
