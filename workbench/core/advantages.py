"""Group-relative advantages and the reward shaping applied before them.

GRPO: A_i = (R_i - mean_G R) / (std_G R + eps)  (DeepSeekMath).
Dr.GRPO: A_i = R_i - mean_G R, no std: the std division up-weights groups that are
almost all right or all wrong (Liu et al., "Understanding R1-Zero-like training").
Groups whose rewards are all equal get A = 0: they teach nothing, and their share is
reported as `batch/zero_adv_group_frac`.
"""

from __future__ import annotations

import torch

EPS = 1e-6


def group_advantages(rewards: torch.Tensor, group_size: int, mode: str = "grpo") -> torch.Tensor:
    """rewards (B,), B = groups * group_size, grouped consecutively -> advantages (B,)."""
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (B,) with B a multiple of group_size={group_size}, got {tuple(rewards.shape)}")
    g = rewards.view(-1, group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    if mode == "grpo":
        adv = centred / (g.std(dim=1, keepdim=True, unbiased=True) + EPS)
    elif mode == "dr_grpo":
        adv = centred
    else:
        raise ValueError(f"advantage mode must be one of grpo, dr_grpo; got {mode!r}")
    # Exactly zero for all-equal groups (std-normalising 0/eps must not leave dust).
    same = (g.max(dim=1).values - g.min(dim=1).values) == 0
    adv[same] = 0.0
    return adv.reshape(-1)


def zero_adv_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(groups,) bool: groups in which every response got the same reward."""
    g = rewards.view(-1, group_size)
    return (g.max(dim=1).values - g.min(dim=1).values) == 0


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer: int, factor: float) -> torch.Tensor:
    """DAPO soft overlong punishment: 0 up to max - buffer, then linear down to -factor at max.

    lengths (B,) -> penalty (B,) to add to the rewards.
    """
    start = max_new_tokens - buffer
    over = (lengths.float() - start).clamp(min=0) / buffer
    return -factor * over.clamp(max=1.0)
