"""Regime statistics as sums and counts, for engines that average metrics without token weights.

`workbench.core.regimes.regime_metrics` returns ratios (e.g. clipped tokens / regime tokens) of one
batch. An engine that splits a batch into micro-batches and ranks and then averages each
metric over them (verl does) would average those ratios with equal weight per micro-batch,
not per token. Sums and counts survive that averaging: the mean over N pieces of each sum is
the global sum / N, so a ratio of two such means is the token-weighted ratio of the whole
batch. `regime_sums` gives the sums per piece; `metrics_from_sums` divides after reduction.

Keys of `regime_sums` (values: 0-dim float64 tensors, no device sync):

    <regime>/tokens  <regime>/clipped  <regime>/weight_sum  <regime>/moved_sum  <regime>/ratio_sum
    nonzero_tokens   tokens   ratio_sum   abs_dev_sum

None of them contains "max" or "min": verl's `reduce_metrics` reduces such keys with max/min.
`metrics_from_sums` returns the keys of `regime_metrics` except `ratio/max` (a maximum does not
survive averaging) and the per-regime entropy (the engine computes entropy itself).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from workbench.core.regimes import REGIMES, regime_masks

_PER_REGIME = ("tokens", "clipped", "weight_sum", "moved_sum", "ratio_sum")


@torch.no_grad()
def regime_sums(ratio: torch.Tensor, weight: torch.Tensor, clipped: torch.Tensor, adv: torch.Tensor,
                mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-regime sums of one (micro-)batch; arguments as in `regime_metrics`, all (B, T)."""
    m = mask.bool()
    r = torch.where(m, ratio.double(), 0.0)
    w = torch.where(m, weight.double(), 0.0)
    per_token = torch.stack((torch.ones_like(r), clipped.double(), w, (w - r).abs(), r)).flatten(1)  # (5, B*T)
    sums = regime_masks(r, adv, m).flatten(1).double() @ per_token.T  # (4, 5)
    out = {f"{name}/{what}": sums[i, j] for i, name in enumerate(REGIMES) for j, what in enumerate(_PER_REGIME)}
    out["nonzero_tokens"] = (m & (adv != 0)).sum().double()
    out["tokens"] = m.sum().double()
    out["ratio_sum"] = r.sum()
    out["abs_dev_sum"] = torch.where(m, (r - 1).abs(), 0.0).sum()
    return out


def metrics_from_sums(sums: Mapping[str, float]) -> dict[str, float]:
    """`regime_metrics` keys from (averaged) sums; NaN where a denominator is 0, as there."""

    def div(num: float, den: float) -> float:
        return float(num) / float(den) if den > 0 else math.nan

    out: dict[str, float] = {}
    for name in REGIMES:
        n = sums[f"{name}/tokens"]
        out[f"regime/{name}/token_frac"] = div(n, sums["nonzero_tokens"])
        out[f"regime/{name}/clip_frac"] = div(sums[f"{name}/clipped"], n)
        out[f"regime/{name}/weight_mean"] = div(sums[f"{name}/weight_sum"], n)
        out[f"regime/{name}/clip_mass"] = div(sums[f"{name}/moved_sum"], sums[f"{name}/ratio_sum"])
    out["ratio/mean"] = div(sums["ratio_sum"], sums["tokens"])
    out["ratio/abs_dev_mean"] = div(sums["abs_dev_sum"], sums["tokens"])
    return out
