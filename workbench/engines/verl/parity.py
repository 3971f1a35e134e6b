"""Parity of the workbench losses inside verl with verl's built-ins, in float64 (CPU).

Every loss is called through verl's registry (`get_policy_loss_fn`) with verl's `ActorConfig`,
exactly as verl's actor calls it, and its loss and gradient with respect to `log_prob` are
compared on the same tensors with:
- verl's built-in where one exists: `vanilla` for grpo, dapo and dr_grpo (dual-clip off:
  `clip_ratio_c` far above any ratio; verl's default 3.0 bounds the loss of A < 0 tokens, which
  none of the compared objectives does), `cispo` (its lower bound off, `clip_ratio_low=1.0`, as
  CISPO defines it), `gspo`;
- dispo with its four bounds equal per sign: verl's `cispo` with the same bounds;
- dispo with four different bounds: a plain per-token loop written from docs/design.md#regimes-and-bounds.

`python -m workbench.engines.verl.parity` prints the table (objective, max |loss diff|,
max |grad diff|) over a few seeds.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.workers.config.actor import ActorConfig, PolicyLossConfig

import workbench.engines.verl.plugin  # noqa: F401  (registers wb_*, as `import verl` does when installed)
from workbench.engines.verl.config import WorkbenchPolicyLossConfig

NO_DUAL_CLIP = 1e12


def actor_config(clip_low: float = 0.2, clip_high: float = 0.2, policy_loss: PolicyLossConfig | None = None) -> ActorConfig:
    """verl's actor config as its actor passes it to a policy loss (one rank, local batch info)."""
    return ActorConfig(strategy="fsdp", rollout_n=4, ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=4, clip_ratio=0.2,
                       clip_ratio_low=clip_low, clip_ratio_high=clip_high, clip_ratio_c=NO_DUAL_CLIP,
                       policy_loss=policy_loss or PolicyLossConfig(), use_dynamic_bsz=False)


def batch(seed: int, b: int = 6, t: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log_prob, old_log_prob, advantages, response_mask), float64, (B, T); ratios spread over ~[0.5, 2]
    so that every bound binds somewhere; advantages per response, of both signs and some zero."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3 - 0.05
    old = logp + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.35
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    adv[b // 3] = 0.0
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(torch.float64)
    return logp, old, adv[:, None].expand(b, t).clone(), mask


def run_loss(name: str, config: ActorConfig, tensors, agg: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d loss / d log_prob) of verl's registered loss `name`."""
    logp, old, adv, mask = tensors
    logp = logp.clone().requires_grad_(True)
    loss, _ = get_policy_loss_fn(name)(old_log_prob=old, log_prob=logp, advantages=adv, response_mask=mask,
                                       loss_agg_mode=agg, config=config, rollout_is_weights=None)
    loss.backward()
    return loss.detach(), logp.grad


def dispo_reference(tensors, pos_up: float, pos_down: float, neg_up: float, neg_down: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DISPO token by token (docs/design.md#regimes-and-bounds), token-mean: -sg(clip(r, lo, hi)) * A * logp."""
    logp, old, adv, mask = tensors
    logp = logp.clone().requires_grad_(True)
    total, count = logp.new_zeros(()), 0
    for i in range(logp.shape[0]):
        for j in range(logp.shape[1]):
            if mask[i, j] == 0:
                continue
            a = float(adv[i, j])
            r = float(torch.exp(logp[i, j].detach() - old[i, j]))
            lo, hi = (1 - pos_down, 1 + pos_up) if a > 0 else (1 - neg_down, 1 + neg_up)
            total = total - min(max(r, lo), hi) * a * logp[i, j]
            count += 1
    loss = total / count
    loss.backward()
    return loss.detach(), logp.grad


class ParityCase(NamedTuple):
    label: str
    ours: str  # workbench loss in verl's registry
    ours_config: ActorConfig
    agg: str
    ref: str | None  # verl built-in; None: `reference` is the comparison
    ref_config: ActorConfig | None = None
    reference: tuple[float, float, float, float] | None = None  # dispo bounds for dispo_reference


_BOUNDS = dict(eps_pos_up=0.1, eps_pos_down=0.4, eps_neg_up=0.05, eps_neg_down=0.15)
PARITY_CASES = [
    ParityCase("grpo = vanilla (dual-clip off)", "wb_grpo", actor_config(0.2, 0.2), "seq-mean-token-mean",
               "vanilla", actor_config(0.2, 0.2)),
    ParityCase("dapo = vanilla (dual-clip off)", "wb_dapo", actor_config(0.2, 0.28), "token-mean",
               "vanilla", actor_config(0.2, 0.28)),
    ParityCase("dr_grpo = vanilla (dual-clip off)", "wb_dr_grpo", actor_config(0.2, 0.2), "seq-mean-token-sum-norm",
               "vanilla", actor_config(0.2, 0.2)),
    ParityCase("cispo = cispo (lower bound off)", "wb_cispo", actor_config(1.0, 0.28), "token-mean",
               "cispo", actor_config(1.0, 0.28)),
    ParityCase("gspo = gspo", "wb_gspo", actor_config(3e-4, 4e-4), "seq-mean-token-mean",
               "gspo", actor_config(3e-4, 4e-4)),
    ParityCase("dispo=cispo (four equal bounds)", "wb_dispo",
               actor_config(policy_loss=WorkbenchPolicyLossConfig(loss_mode="wb_dispo", eps_pos_up=0.28, eps_pos_down=0.3,
                                                                  eps_neg_up=0.28, eps_neg_down=0.3)),
               "token-mean", "cispo", actor_config(0.3, 0.28)),
    ParityCase("dispo four bounds = reference", "wb_dispo",
               actor_config(policy_loss=WorkbenchPolicyLossConfig(loss_mode="wb_dispo", **_BOUNDS)), "token-mean",
               None, reference=tuple(_BOUNDS.values())),
]


def max_diffs(case: ParityCase, seed: int) -> tuple[float, float]:
    """(|loss diff|, max |grad diff|) of one case on one seed's batch."""
    tensors = batch(seed)
    loss, grad = run_loss(case.ours, case.ours_config, tensors, case.agg)
    if case.ref is not None:
        ref_loss, ref_grad = run_loss(case.ref, case.ref_config, tensors, case.agg)
    else:
        ref_loss, ref_grad = dispo_reference(tensors, *case.reference)
    return float((loss - ref_loss).abs()), float((grad - ref_grad).abs().max())


def parity_table(seeds: range = range(5)) -> list[tuple[str, float, float]]:
    rows = []
    for case in PARITY_CASES:
        diffs = [max_diffs(case, s) for s in seeds]
        rows.append((case.label, max(d[0] for d in diffs), max(d[1] for d in diffs)))
    return rows


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="workbench losses in verl's registry vs verl built-ins / reference (float64, 5 seeds)")
    for col in ("objective", "max |loss diff|", "max |grad diff|"):
        table.add_column(col)
    for label, dl, dg in parity_table():
        table.add_row(label, f"{dl:.1e}", f"{dg:.1e}")
    Console().print(table)


if __name__ == "__main__":
    main()
