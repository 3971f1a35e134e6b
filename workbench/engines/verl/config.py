"""The policy-loss config verl builds for the workbench's losses (selected with `_target_`).

verl instantiates `actor_rollout_ref.actor.policy_loss` from its `_target_`; pointing that at
`WorkbenchPolicyLossConfig` gives the loss DISPO's four bounds under their own names instead of
reusing verl fields that mean something else (`clip_ratio_c` is dual-clip, not a bound):

    actor_rollout_ref.actor.policy_loss._target_=workbench.engines.verl.config.WorkbenchPolicyLossConfig
    actor_rollout_ref.actor.policy_loss.loss_mode=wb_dispo
    +actor_rollout_ref.actor.policy_loss.eps_neg_up=0.05   (and the other three, mask_mode)

The clip objectives (grpo, dapo, cispo, gspo, dr_grpo) read verl's own `clip_ratio_low` and
`clip_ratio_high`, which are offsets from 1 exactly like their `eps_low` and `eps_high`.
"""

from __future__ import annotations

from dataclasses import dataclass

from verl.workers.config.actor import PolicyLossConfig

TARGET = f"{__name__}.WorkbenchPolicyLossConfig"


@dataclass
class WorkbenchPolicyLossConfig(PolicyLossConfig):
    """verl's policy-loss config plus DISPO's bounds (offsets from 1, as `workbench.core.objectives.DispoParams`)."""

    eps_pos_up: float = 0.2  # correct responses, r >= 1: w <= 1 + eps_pos_up (inf: off)
    eps_pos_down: float = 0.2  # correct responses, r < 1: w >= 1 - eps_pos_down (>= 1: off)
    eps_neg_up: float = 0.2  # incorrect responses, r >= 1: w <= 1 + eps_neg_up (inf: off)
    eps_neg_down: float = 0.2  # incorrect responses, r < 1: w >= 1 - eps_neg_down (>= 1: off)
    mask_mode: bool = False  # drop tokens outside their bound instead of clipping
