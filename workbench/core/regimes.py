"""The four DISPO regimes and the per-regime statistics every objective logs.

A response token falls in one regime by the sign of its advantage and the direction its
importance ratio moved (docs/design.md#regimes-and-bounds):

    pos_up    A > 0, r >= 1        neg_up    A < 0, r >= 1
    pos_down  A > 0, r <  1        neg_down  A < 0, r <  1

`r == 1` counts as "up", so on-policy tokens all land in `*_up` regimes. Tokens with
A == 0 (groups whose responses all got the same reward) and masked tokens belong to no
regime. The four regimes therefore partition the masked-in tokens with A != 0.

Metric keys (docs/design.md#metrics), produced by `regime_metrics` for all four regimes:

    regime/<r>/token_frac   regime tokens / masked-in tokens with A != 0
    regime/<r>/clip_frac    share of the regime's tokens that its objective clipped
    regime/<r>/weight_mean  mean weight the objective put on the regime's tokens
    regime/<r>/clip_mass    sum |w - r| / sum r over the regime: how much clipping moved it
    regime/<r>/entropy      mean per-token entropy (only when entropy is passed)
    ratio/mean, ratio/max   over masked-in tokens
    ratio/abs_dev_mean      mean |r - 1| over masked-in tokens: how off-policy the batch is

A statistic whose denominator is empty (a regime with no tokens in this minibatch, a
batch without non-zero advantages, an all-masked batch) is NaN: "undefined here", not 0,
which would read as "nothing clipped" or "weight 0". Consumers averaging over
minibatches skip NaN values (the trainer does).
"""

from __future__ import annotations

import math

import torch

from workbench.names import REGIMES, regime_key


def regime_masks(ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Boolean masks of the four regimes, stacked in `REGIMES` order.

    Args:
        ratio: (B, T) importance ratio r (the ratio the objective clips).
        adv: (B, T) advantage per token.
        mask: (B, T) bool, True for response tokens.

    Returns:
        (4, B, T) bool; each token is True in at most one regime. r == 1 counts as up.
    """
    m = mask.bool()
    pos = m & (adv > 0)
    neg = m & (adv < 0)
    up = ratio >= 1
    return torch.stack((pos & up, pos & ~up, neg & up, neg & ~up))


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-token entropy of softmax(logits / temperature), in nats.

    Args:
        logits: (B, T, V) raw next-token logits.
        temperature: sampling temperature (> 0); entropy is measured where sampling was.

    Returns:
        (B, T) float32 entropy. Computed from log_softmax in float32 so that large logits
        do not overflow and -inf logits (filtered vocabulary) contribute 0, not NaN.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a (B, T, V) tensor, got {shape}")
    if not (isinstance(temperature, (int, float)) and 0 < float(temperature) < float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    logp = torch.log_softmax(logits.float() / float(temperature), dim=-1)
    # p * log p with log p = -inf would be 0 * -inf = NaN; the limit is 0.
    logp = logp.clamp_min(torch.finfo(logp.dtype).min)
    return -(logp.exp() * logp).sum(dim=-1)


@torch.no_grad()
def regime_metrics(
    ratio: torch.Tensor,
    weight: torch.Tensor,
    clipped: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    entropy: torch.Tensor | None = None,
) -> dict[str, float]:
    """Per-regime and ratio statistics as a flat dict of Python floats.

    All objectives call this, each passing its own notion of weight and clipping (see
    `workbench.core.objectives`). One device sync in total: every sum is stacked and moved
    to the host with a single `.tolist()`.

    Args:
        ratio: (B, T) importance ratio r the objective clips.
        weight: (B, T) weight w the objective applied in place of r.
        clipped: (B, T) bool, True where the objective's bound acted on the token.
        adv: (B, T) advantage per token.
        mask: (B, T) bool, True for response tokens.
        entropy: optional (B, T) per-token entropy (see `token_entropy`).

    Returns:
        Keys as in the module docstring; values are Python floats.
    """
    for arg, t in (("weight", weight), ("clipped", clipped), ("adv", adv), ("mask", mask), ("entropy", entropy)):
        if t is not None and t.shape != ratio.shape:
            raise ValueError(f"{arg} must have the shape of ratio {tuple(ratio.shape)}, got {tuple(t.shape)}")
    m = mask.bool()
    # Padding may hold anything; zero it so that 0 * NaN cannot leak into the sums.
    r = torch.where(m, ratio.float(), 0.0)
    w = torch.where(m, weight.float(), 0.0)
    per_token = [torch.ones_like(r), clipped.float(), w, (w - r).abs(), r]
    if entropy is not None:
        per_token.append(torch.where(m, entropy.float(), 0.0))
    # float64: exact token counts, and immune to TF32 matmuls that a trainer may switch on.
    regimes = regime_masks(r, adv, m).flatten(1).double()  # (4, B*T)
    sums = regimes @ torch.stack(per_token).flatten(1).double().T  # (4, K)
    masked_ratio_max = torch.where(m, r, -torch.inf).max() if r.numel() else r.new_tensor(-torch.inf)
    totals = torch.stack(
        (
            (m & (adv != 0)).sum().double(),
            m.sum().double(),
            r.double().sum(),
            torch.where(m, (r - 1).abs(), 0.0).double().sum(),
            masked_ratio_max.double(),
        )
    )
    host = torch.cat((sums.flatten(), totals)).tolist()
    k = len(per_token)
    n_nonzero, n_tokens, ratio_sum, abs_dev_sum, ratio_max = host[4 * k :]

    def div(num: float, den: float) -> float:
        return num / den if den > 0 else math.nan

    out: dict[str, float] = {}
    for i, name in enumerate(REGIMES):
        row = host[i * k : (i + 1) * k]
        n, n_clipped, w_sum, moved, r_sum = row[:5]
        out[regime_key(name, "token_frac")] = div(n, n_nonzero)
        out[regime_key(name, "clip_frac")] = div(n_clipped, n)
        out[regime_key(name, "weight_mean")] = div(w_sum, n)
        out[regime_key(name, "clip_mass")] = div(moved, r_sum)
        if entropy is not None:
            out[regime_key(name, "entropy")] = div(row[5], n)
    out["ratio/mean"] = div(ratio_sum, n_tokens)
    out["ratio/max"] = ratio_max if n_tokens > 0 else math.nan
    out["ratio/abs_dev_mean"] = div(abs_dev_sum, n_tokens)
    return out
