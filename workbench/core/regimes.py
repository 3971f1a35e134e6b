"""The four DISPO regimes, the per-regime statistics every engine logs, and the entropy push.

A response token falls in one regime by the sign of its advantage and the direction its
importance ratio moved (docs/design.md#regimes-and-bounds):

    pos_up    A > 0, r >= 1        neg_up    A < 0, r >= 1
    pos_down  A > 0, r <  1        neg_down  A < 0, r <  1

`r == 1` counts as "up", so on-policy tokens all land in `*_up` regimes. Tokens with
A == 0 (groups whose responses all got the same reward) and masked tokens belong to no
regime. The four regimes therefore partition the masked-in tokens with A != 0 (the
"regime tokens"); each regime splits again into its clipped and its kept tokens.

One definition for every engine. Each statistic is a ratio of token sums over the whole
rollout batch of one step, however the engine cut it into minibatches, micro-batches and
ranks: `regime_sums` gives the sums of one piece, `RegimeAccumulator` adds pieces and
`metrics_from_sums` divides once per step. Sums also survive an engine that averages each
returned number over its pieces with equal weight (verl): a ratio of two such means is the
ratio of the totals. Keys (`workbench.names`, docs/design.md#metrics), for all four regimes:

    regime/<r>/token_frac   regime tokens / regime tokens of all four regimes
    regime/<r>/clip_frac    share of the regime's tokens that its objective clipped
    regime/<r>/weight_mean  mean weight w the objective put on the regime's tokens
    regime/<r>/clip_mass    sum |w - r| / sum r over the regime: how much clipping moved it
    regime/<r>/entropy      mean per-token entropy            (only when entropy is given)
    regime/<r>/entropy_push, regime/<r>/entropy_push_clipped   (only when logp and coef are given)
    entropy/mean            mean entropy over masked-in tokens (only when entropy is given)
    ratio/mean, ratio/max   over masked-in tokens (ratio/max: not in the sums; see RegimeAccumulator)
    ratio/abs_dev_mean      mean |r - 1| over masked-in tokens: how off-policy the batch is

A statistic whose denominator is empty (a regime with no tokens in the step, a batch
without non-zero advantages, an all-masked batch) is NaN: "undefined here", not 0.

Entropy push (Cui et al. 2025, arXiv 2505.22617). To first order, moving a softmax policy's
logits z(s, .) by dz changes its entropy by dH(s) = -Cov_{a~pi(.|s)}(log pi(a|s), dz(s, a)).
A policy-gradient step moves the logit of a sampled token t in proportion to its coefficient
u_t = -d loss_t / d logp_t (detached): w_t * A_t where the objective lets the gradient flow,
0 where its clip stopped it (PPO-clip's clipped tokens, dispo's mask_mode); see `logp_coef`.
Over the N regime tokens of the step, with l_t = logp_t (log-probability of the sampled token
under the policy being updated) and both centred over those N tokens,

    push      = -(1/N) sum_t (l_t - mean l) (u_t - mean u)          (positive: entropy goes up)
    push_P    = -(1/N) sum_{t in P} (l_t - mean l) (u_t - mean u)   P = regime x {kept, clipped}

so the eight parts add up to `push` exactly. `regime/<r>/entropy_push` is the regime's kept
plus clipped part, `regime/<r>/entropy_push_clipped` the clipped part (kept = the difference);
a regime with no tokens contributes 0 (NaN only when the step has no regime tokens). `push` is
the first-order entropy change per unit step size of a natural-gradient step (dz = eta * u on a
tabular softmax, tokens drawn from pi), averaged over the step's tokens; the batch centring adds
a between-context term that vanishes when contexts share their mean log-probability or their
mean coefficient. Per-token aggregation weights (1/N, 1/(B*L)) are not in u.
tests/test_mechanism.py checks the first-order identity on a tabular policy;
benchmarks/entropy_push.py measures how often its sign predicts the next step's entropy change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from workbench.names import ENTROPY_MEAN, RATIO_ABS_DEV, RATIO_MAX, RATIO_MEAN, REGIMES, regime_key

PARTS = ("kept", "clipped")
# Per part (regime x kept/clipped): tokens, clipped, sum w, sum |w - r|, sum r; then sum entropy;
# then sum l, sum u, sum l*u. No name contains "max" or "min": verl reduces such keys with max/min.
_BASE = ("tokens", "clipped", "weight_sum", "moved_sum", "ratio_sum")
_ENTROPY = ("entropy_sum",)
_PUSH = ("logp_sum", "coef_sum", "logp_coef_sum")


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


def logp_coef(per_token_loss: torch.Tensor, logp: torch.Tensor) -> torch.Tensor | None:
    """u = -d loss_t / d logp_t, (B, T) detached: the coefficient a step puts on each token's logit.

    Backpropagates through the objective's element-wise ops only (the graph is kept for the
    real backward). None when the loss has no graph to `logp` (evaluation under no_grad).
    """
    if not (per_token_loss.requires_grad and logp.requires_grad):
        return None
    (grad,) = torch.autograd.grad(per_token_loss.sum(), logp, retain_graph=True, allow_unused=True)
    return torch.zeros_like(logp).detach() if grad is None else -grad.detach()


def _names(entropy: bool, push: bool) -> tuple[str, ...]:
    return _BASE + (_ENTROPY if entropy else ()) + (_PUSH if push else ())


@torch.no_grad()
def regime_sums(ratio: torch.Tensor, weight: torch.Tensor, clipped: torch.Tensor, adv: torch.Tensor,
                mask: torch.Tensor, entropy: torch.Tensor | None = None, logp: torch.Tensor | None = None,
                coef: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Token sums of one piece of a step's batch: 0-dim float64 tensors, no device sync.

    Args (all (B, T)):
        ratio: importance ratio r the objective clips.
        weight: weight w the objective applied in place of r.
        clipped: bool, True where the objective's bound acted on the token.
        adv: advantage per token.
        mask: bool, True for response tokens.
        entropy: optional per-token entropy (see `token_entropy`).
        logp, coef: optional, together: log-probability of the sampled token and its
            coefficient u (see `logp_coef`), for the entropy push.

    Returns:
        `<regime>/<kept|clipped>/<sum>` for every part and sum, and `nonzero_tokens`,
        `tokens`, `ratio_sum`, `abs_dev_sum` (and `entropy_sum`) over masked-in tokens.
    """
    for arg, t in (("weight", weight), ("clipped", clipped), ("adv", adv), ("mask", mask), ("entropy", entropy),
                   ("logp", logp), ("coef", coef)):
        if t is not None and t.shape != ratio.shape:
            raise ValueError(f"{arg} must have the shape of ratio {tuple(ratio.shape)}, got {tuple(t.shape)}")
    if (logp is None) != (coef is None):
        raise ValueError("logp and coef go together (the entropy push needs both)")
    m = mask.bool()
    # Padding may hold anything; zero it so that 0 * NaN cannot leak into the sums.
    # float64: exact token counts, and immune to TF32 matmuls that a trainer may switch on.
    r = torch.where(m, ratio.double(), 0.0)
    w = torch.where(m, weight.double(), 0.0)
    c = clipped.bool() & m
    per_token = [torch.ones_like(r), c.double(), w, (w - r).abs(), r]
    if entropy is not None:
        h = torch.where(m, entropy.double(), 0.0)
        per_token.append(h)
    if logp is not None:
        lp, u = torch.where(m, logp.double(), 0.0), torch.where(m, coef.double(), 0.0)
        per_token += [lp, u, lp * u]
    regimes = regime_masks(r, adv, m)  # (4, B, T)
    parts = torch.stack((regimes & ~c, regimes & c), dim=1).flatten(2).double()  # (4, 2, B*T)
    sums = parts.flatten(0, 1) @ torch.stack(per_token).flatten(1).T  # (8, K)
    names = _names(entropy is not None, logp is not None)
    out = {f"{g}/{p}/{what}": sums[2 * i + j, k]
           for i, g in enumerate(REGIMES) for j, p in enumerate(PARTS) for k, what in enumerate(names)}
    out["nonzero_tokens"] = (m & (adv != 0)).sum().double()
    out["tokens"] = m.sum().double()
    out["ratio_sum"] = r.sum()
    out["abs_dev_sum"] = torch.where(m, (r - 1).abs(), 0.0).sum()
    if entropy is not None:
        out["entropy_sum"] = h.sum()
    return out


def metrics_from_sums(sums: Mapping[str, float]) -> dict[str, float]:
    """The statistics of the module docstring from (summed, or equally averaged) sums; no ratio/max."""

    def div(num: float, den: float) -> float:
        return float(num) / float(den) if den > 0 else math.nan

    def total(g: str, what: str) -> float:
        return float(sums[f"{g}/kept/{what}"]) + float(sums[f"{g}/clipped/{what}"])

    has_entropy = "entropy_sum" in sums
    has_push = f"{REGIMES[0]}/kept/logp_coef_sum" in sums
    n_all = float(sums["nonzero_tokens"])
    out: dict[str, float] = {}
    for g in REGIMES:
        n = total(g, "tokens")
        out[regime_key(g, "token_frac")] = div(n, n_all)
        out[regime_key(g, "clip_frac")] = div(total(g, "clipped"), n)
        out[regime_key(g, "weight_mean")] = div(total(g, "weight_sum"), n)
        out[regime_key(g, "clip_mass")] = div(total(g, "moved_sum"), total(g, "ratio_sum"))
        if has_entropy:
            out[regime_key(g, "entropy")] = div(total(g, "entropy_sum"), n)
    if has_push:
        out.update(_push(sums, n_all))
    out[RATIO_MEAN] = div(sums["ratio_sum"], sums["tokens"])
    out[RATIO_ABS_DEV] = div(sums["abs_dev_sum"], sums["tokens"])
    if has_entropy:
        out[ENTROPY_MEAN] = div(sums["entropy_sum"], sums["tokens"])
    return out


def _push(sums: Mapping[str, float], n_all: float) -> dict[str, float]:
    """Per-regime entropy push (whole regime, and its clipped part) from the part sums."""
    keys = [(g, p) for g in REGIMES for p in PARTS]
    if n_all <= 0:
        return {regime_key(g, s): math.nan for g in REGIMES for s in ("entropy_push", "entropy_push_clipped")}
    get = {(g, p): [float(sums[f"{g}/{p}/{w}"]) for w in ("tokens", "logp_sum", "coef_sum", "logp_coef_sum")]
           for g, p in keys}
    l_bar = sum(v[1] for v in get.values()) / n_all
    u_bar = sum(v[2] for v in get.values()) / n_all
    # sum_P (l - l_bar)(u - u_bar) expanded into the part's own sums, so parts stay additive.
    part = {k: -(lu - u_bar * l - l_bar * u + n * l_bar * u_bar) / n_all for k, (n, l, u, lu) in get.items()}
    out = {}
    for g in REGIMES:
        out[regime_key(g, "entropy_push")] = part[(g, "kept")] + part[(g, "clipped")]
        out[regime_key(g, "entropy_push_clipped")] = part[(g, "clipped")]
    return out


class RegimeAccumulator:
    """Adds `regime_sums` of a step's pieces (minibatches, micro-batches) and divides once.

    Every piece must carry the same optional inputs (entropy; logp and coef). The maximum
    ratio is kept beside the sums (a maximum is not a sum). Sums stay on the device until
    `result`, which syncs once.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._max: torch.Tensor | None = None

    def __bool__(self) -> bool:
        return bool(self._sums)

    @torch.no_grad()
    def add(self, ratio: torch.Tensor, weight: torch.Tensor, clipped: torch.Tensor, adv: torch.Tensor,
            mask: torch.Tensor, entropy: torch.Tensor | None = None, logp: torch.Tensor | None = None,
            coef: torch.Tensor | None = None) -> None:
        """One piece, arguments as in `regime_sums`."""
        self.add_sums(regime_sums(ratio, weight, clipped, adv, mask, entropy, logp, coef))
        m = mask.bool()
        piece_max = torch.where(m, ratio.double(), -torch.inf).max() if ratio.numel() else None
        if piece_max is not None:
            self._max = piece_max if self._max is None else torch.maximum(self._max, piece_max)

    def add_sums(self, sums: Mapping[str, torch.Tensor]) -> None:
        if self._sums and set(sums) != set(self._sums):
            raise ValueError("every piece of a step must give the same inputs (entropy; logp and coef)")
        for k, v in sums.items():
            self._sums[k] = self._sums[k] + v if k in self._sums else v

    def result(self) -> dict[str, float]:
        """The step's statistics; {} if nothing was added."""
        if not self._sums:
            return {}
        names = list(self._sums)
        values = torch.stack([self._sums[k] for k in names]
                             + [self._max if self._max is not None else torch.tensor(-math.inf, dtype=torch.float64)])
        host = values.tolist()  # one device sync
        out = metrics_from_sums(dict(zip(names, host[:-1])))
        out[RATIO_MAX] = host[-1] if host[-1] > -math.inf else math.nan
        return out


def regime_metrics(ratio: torch.Tensor, weight: torch.Tensor, clipped: torch.Tensor, adv: torch.Tensor,
                   mask: torch.Tensor, entropy: torch.Tensor | None = None, logp: torch.Tensor | None = None,
                   coef: torch.Tensor | None = None) -> dict[str, float]:
    """The statistics of one batch as a flat dict of Python floats (a one-piece `RegimeAccumulator`).

    All objectives call this, each passing its own notion of weight and clipping (see
    `workbench.core.objectives`). Arguments as in `regime_sums`.
    """
    acc = RegimeAccumulator()
    acc.add(ratio, weight, clipped, adv, mask, entropy, logp, coef)
    return acc.result()
