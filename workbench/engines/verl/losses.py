"""The workbench's objectives as verl policy losses: `wb_<objective>` in verl's registry.

Each loss takes verl's signature (tensors (B, T): old_log_prob, log_prob, advantages,
response_mask), computes the per-token loss with `workbench.core.objectives` (no second
implementation), multiplies verl's rollout-correction weights in as verl's built-ins do, and
aggregates with verl's own `agg_loss` and `config.global_batch_info`, so `token-mean` etc. mean
what verl means across micro-batches and data-parallel ranks.

Metrics: verl's `ppo_loss` (verl/workers/utils/losses.py) wraps each returned metric in a
`Metric` with MEAN aggregation; the worker averages it over a rank's micro-batches, then over
data-parallel ranks (`Metric.aggregate_dp`, which requires the same micro-batch count on every
rank), and the trainer's `reduce_metrics` averages over mini-batches. Every piece gets the same
weight when every mini-batch has the same number of micro-batches per rank (fixed micro-batch
size; with use_dynamic_bsz the counts may differ and the statistics are then only approximately
token-weighted). The losses therefore return the token sums of `workbench.core.regimes.regime_sums`
(with logp and its coefficient, for the entropy push) under `actor/wb/...`;
`workbench.engines.verl.keys` divides them after that averaging: a ratio of two equal-weight
means is the ratio of the totals, the same token-weighted statistics as the local trainer's
(tests/test_regime_engines.py). verl does not pass entropy to a policy loss, so a verl run has no
per-regime entropy.
"""

from __future__ import annotations

from typing import Any

import torch
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, agg_loss, register_policy_loss

from workbench.engines.verl.keys import METRIC_PREFIX
from workbench.core.objectives import ClipParams, DispoParams, get_spec, list_objectives, objective_terms
from workbench.core.regimes import logp_coef, regime_sums
from workbench.params import DISPO_BOUNDS

PREFIX = "wb_"


def loss_name(objective: str) -> str:
    """verl's `policy_loss.loss_mode` for a workbench objective."""
    return PREFIX + objective


def objective_params(objective: str, config: Any):
    """The objective's params from verl's actor config (see `workbench.engines.verl.config`)."""
    spec = get_spec(objective)
    if spec.params_cls is DispoParams:
        pl = config.policy_loss
        missing = [f for f in (*DISPO_BOUNDS, "mask_mode") if not hasattr(pl, f)]
        if missing:
            raise ValueError(f"{loss_name(objective)} needs actor.policy_loss._target_="
                             f"workbench.engines.verl.config.WorkbenchPolicyLossConfig (missing: {', '.join(missing)})")
        return DispoParams(**{b: float(getattr(pl, b)) for b in DISPO_BOUNDS}, mask_mode=bool(pl.mask_mode))
    if spec.params_cls is ClipParams:
        low = config.clip_ratio_low if config.clip_ratio_low is not None else config.clip_ratio
        high = config.clip_ratio_high if config.clip_ratio_high is not None else config.clip_ratio
        return ClipParams(eps_low=float(low), eps_high=float(high))
    raise ValueError(f"objective {objective!r} has parameters the verl plugin cannot read ({spec.params_cls.__name__})")


def make_policy_loss(objective: str):
    """verl's `PolicyLossFn` for a workbench objective."""
    get_spec(objective)

    def policy_loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                    response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                    rollout_is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        if config is None:
            raise ValueError(f"{loss_name(objective)} needs verl's actor config")
        params = objective_params(objective, config)
        per_token, terms, adv = objective_terms(objective, log_prob, old_log_prob, advantages, response_mask, params)
        if rollout_is_weights is not None:
            per_token = per_token * rollout_is_weights
        loss = agg_loss(loss_mat=per_token, loss_mask=response_mask, loss_agg_mode=loss_agg_mode,
                        **config.global_batch_info)
        coef = logp_coef(per_token, log_prob)  # None without a graph: no entropy push then
        sums = regime_sums(terms.ratio, terms.weight, terms.clipped, adv, response_mask,
                           logp=None if coef is None else log_prob.detach(), coef=coef)
        values = torch.stack(list(sums.values())).tolist()  # one device sync
        return loss, {METRIC_PREFIX + k: v for k, v in zip(sums, values)}

    policy_loss.__name__ = policy_loss.__qualname__ = loss_name(objective)
    policy_loss.__doc__ = f"workbench objective {objective!r} ({get_spec(objective).paper}) as a verl policy loss."
    return policy_loss


def register_all() -> list[str]:
    """Register `wb_<objective>` for every workbench objective; idempotent (Ray workers import twice)."""
    names = []
    for objective in list_objectives():
        name = loss_name(objective)
        if name not in POLICY_LOSS_REGISTRY:
            register_policy_loss(name)(make_policy_loss(objective))
        names.append(name)
    return names

