"""Policy-gradient objectives as pure functions, registered by name.

Every objective has one signature (tensor shapes in brackets):

    per_token_loss, metrics = fn(logp [B, T], old_logp [B, T], advantages [B] or [B, T],
                                 mask [B, T], params=None, entropy=None [B, T])
    loss = aggregate(per_token_loss, mask, mode=spec.aggregation)

`per_token_loss` is zero where mask is 0 (float32 for half-precision inputs, else logp's dtype); `metrics` is the flat dict of Python floats of
`workbench.core.regimes.regime_metrics`. `params=None` means the objective's registered
defaults (dapo's are not grpo's, although both take `ClipParams`).

What each objective calls its weight `w` and when it counts a token as clipped (the
`regime/*/weight_mean`, `clip_frac` and `clip_mass` metrics):
- PPO family (grpo, dr_grpo, dapo, gspo): the surrogate is `min(r*A, clip(r)*A)`, i.e.
  `w*A` with `w = clip(r)` where the clip branch is strictly smaller and `w = r`
  elsewhere. A token is clipped exactly where the clip branch wins, which is where its
  gradient is zero (at a tie both branches agree and the gradient flows).
- cispo, dispo: `w = clip(r, lo, hi)`; a token is clipped where `w != r`. Its gradient
  still flows, scaled by the bound. With dispo's `mask_mode` a token outside its bound
  is dropped instead (`w = 0`, zero gradient) and counts as clipped.
- gspo: r is the sequence ratio, the same for every token of a response.

Where this code departs from the papers, and why:
- The log-ratio `logp - old_logp` is clamped to [-20, 20] before `exp` (as verl does), so
  a stale or broken `old_logp` cannot produce inf/NaN losses; no real ratio gets there.
- No KL penalty and no PPO dual-clip: none of the compared papers uses them.
- dr_grpo's "no std normalisation of advantages" and dapo's dynamic sampling and soft
  overlong penalty act on rewards/advantages, so they live in the trainer; here those
  objectives are their losses and aggregations only.
- gspo is written in its GSPO-token form: token t carries `sg(s_i) * exp(logp_t -
  sg(logp_t))`, whose value is the sequence ratio s_i. With `seq_mean_token_mean` this
  gives exactly the sequence-level loss and gradient of the paper, and it also accepts
  per-token advantages.
- cispo's defaults: MiniMax-M1 switches the lower bound off (large eps_low) and tunes only
  eps_high without publishing its value; we use eps_low = 1.0 (off) and eps_high = 0.28,
  DAPO's clip-higher value, as open CISPO implementations do.
- dispo's defaults (all four offsets 0.2) are a neutral symmetric start: the DISPO paper
  does not publish its values. At the defaults dispo equals cispo(0.2, 0.2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Callable, NamedTuple

import torch

from workbench.params import (AGGREGATIONS, ClipParams, DispoParams, ObjectiveParams,  # noqa: F401 - re-exported
                              check_aggregation, declare_objective, objective_params)
from workbench.params import make_params as make_params  # noqa: F401 - one name for callers of the registry
from workbench.core.regimes import regime_metrics

LOG_RATIO_CLAMP = 20.0


# --- registry -----------------------------------------------------------------------------


class Terms(NamedTuple):
    """What an objective's core computes; all (B, T)."""

    loss: torch.Tensor  # per-token loss, padding not yet zeroed
    ratio: torch.Tensor  # the ratio the objective clips (detached)
    weight: torch.Tensor  # the weight it used in place of the ratio (detached)
    clipped: torch.Tensor  # bool, where its bound acted


ObjectiveFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    fn: ObjectiveFn
    params_cls: type
    default_params: Any
    aggregation: str  # default aggregation mode for `aggregate`
    paper: str
    core: Callable[..., Terms] | None = None  # what `objective_terms` calls


_REGISTRY: dict[str, ObjectiveSpec] = {}


def register_objective(
    name: str, *, paper: str | None = None, params_cls: type | None = None, aggregation: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> Callable[[Callable[..., Terms]], ObjectiveFn]:
    """Register `core(logp, old_logp, adv, mask, params) -> Terms` under `name`.

    The core receives validated (B, T) tensors: padding zeroed, `adv` expanded and
    detached, `old_logp` detached, `mask` bool. The decorator returns the public function
    (validation, masking, metrics). A built-in objective's parameter class, aggregation,
    defaults and paper are declared in `workbench.params` only; a new one passes them here
    (`defaults` overrides fields of `params_cls()`) and they are declared there.
    """
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"objective name must match [a-z0-9_]+, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"objective {name!r} is already registered")
    new = params_cls is not None
    if new and not paper:
        raise ValueError(f"objective {name!r}: a new objective names its paper (paper=...)")
    declared = (ObjectiveParams(params_cls, check_aggregation(aggregation or ""), dict(defaults or {}), paper) if new
                else objective_params(name))
    params_cls, aggregation, default_params = declared.params_cls, declared.aggregation, declared.default_params

    def decorator(core: Callable[..., Terms]) -> ObjectiveFn:
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} is already registered")
        if new:
            declare_objective(name, declared)

        def objective(logp, old_logp, advantages, mask, params=None, entropy=None):
            if params is None:
                params = default_params
            elif not isinstance(params, params_cls):
                raise ValueError(f"params of {name!r} must be {params_cls.__name__}, got {type(params).__name__}")
            logp, old_logp, adv, m = _prepare(logp, old_logp, advantages, mask, entropy)
            terms = core(logp, old_logp, adv, m, params)
            metrics = regime_metrics(terms.ratio, terms.weight, terms.clipped, adv, m, entropy)
            return torch.where(m, terms.loss, 0.0), metrics

        objective.__name__ = objective.__qualname__ = name
        objective.__doc__ = core.__doc__
        _REGISTRY[name] = ObjectiveSpec(name, objective, params_cls, default_params, aggregation, declared.paper, core)
        return objective

    return decorator


def objective_terms(name: str, logp, old_logp, advantages, mask, params=None) -> tuple[torch.Tensor, Terms, torch.Tensor]:
    """`(per_token_loss, terms, adv)` of objective `name`: the loss of `get_objective(name)` plus
    its ratio, weight and clip decisions and the (B, T) advantages, for callers that reduce the
    statistics themselves (`workbench.core.regimes.RegimeAccumulator`, `regime_sums`)."""
    spec = get_spec(name)
    if params is None:
        params = spec.default_params
    elif not isinstance(params, spec.params_cls):
        raise ValueError(f"params of {name!r} must be {spec.params_cls.__name__}, got {type(params).__name__}")
    logp, old_logp, adv, m = _prepare(logp, old_logp, advantages, mask, None)
    terms = spec.core(logp, old_logp, adv, m, params)
    return torch.where(m, terms.loss, 0.0), terms, adv


def list_objectives() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ObjectiveSpec:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(list_objectives())}") from None


def get_objective(name: str) -> ObjectiveFn:
    return get_spec(name).fn


def describe_objectives() -> list[dict[str, Any]]:
    """One row per objective: name, params (field -> default), aggregation, paper."""
    return [
        {
            "name": s.name,
            "params": {f.name: getattr(s.default_params, f.name) for f in fields(s.params_cls)},
            "aggregation": s.aggregation,
            "paper": s.paper,
        }
        for s in (_REGISTRY[n] for n in list_objectives())
    ]


def render_objectives_table():
    """A rich Table of `describe_objectives()` for `dispo-wb objectives`."""
    from rich.table import Table

    table = Table(title="registered objectives")
    for column in ("objective", "parameters (defaults)", "aggregation", "paper"):
        table.add_column(column, no_wrap=column in ("objective", "aggregation"))
    for row in describe_objectives():
        params = "\n".join(f"{k} = {v}" for k, v in row["params"].items())
        table.add_row(row["name"], params, row["aggregation"], row["paper"])
    return table


# --- input handling -----------------------------------------------------------------------


def _shape_of(x: Any) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _prepare(logp, old_logp, advantages, mask, entropy):
    """Validate inputs (one device sync) and return (logp, old_logp, adv, mask) as (B, T)."""
    if not isinstance(logp, torch.Tensor) or logp.dim() != 2 or not logp.is_floating_point():
        raise ValueError(f"logp must be a float tensor of shape (B, T), got {_shape_of(logp)}")
    bt = tuple(logp.shape)
    for arg, t in (("old_logp", old_logp), ("mask", mask), ("entropy", entropy)):
        if (t is not None or arg != "entropy") and (not isinstance(t, torch.Tensor) or tuple(t.shape) != bt):
            raise ValueError(f"{arg} must be a tensor of shape (B, T) = {bt} like logp, got {_shape_of(t)}")
    if not isinstance(advantages, torch.Tensor) or tuple(advantages.shape) not in (bt[:1], bt):
        raise ValueError(f"advantages must be a tensor of shape (B,) = {bt[:1]} or (B, T) = {bt}, got {_shape_of(advantages)}")

    with torch.no_grad():
        m = mask.bool()
        adv = advantages.detach()
        adv = adv[:, None].expand(bt) if adv.dim() == 1 else adv
        checks = {
            "mask must hold only 0 and 1": ((mask != 0) & (mask != 1)).any(),
            "logp must be finite at masked-in tokens": (m & ~torch.isfinite(logp)).any(),
            "old_logp must be finite at masked-in tokens": (m & ~torch.isfinite(old_logp)).any(),
            "advantages must be finite at masked-in tokens": (m & ~torch.isfinite(adv)).any(),
        }
        if entropy is not None:
            checks["entropy must be finite at masked-in tokens"] = (m & ~torch.isfinite(entropy)).any()
        failed = [msg for msg, bad in zip(checks, torch.stack(list(checks.values())).tolist()) if bad]
    if failed:
        raise ValueError("; ".join(failed) + " (got NaN/inf or other values there)")
    # Half-precision ratios resolve ~0.8% near 1, as coarse as the clip decisions they feed.
    dtype = torch.float32 if logp.dtype in (torch.float16, torch.bfloat16) else logp.dtype
    # Zero the padding so that garbage there cannot reach values or gradients (0 * NaN).
    logp = torch.where(m, logp.to(dtype), 0.0)
    old_logp = torch.where(m, old_logp.detach().to(dtype), 0.0)
    adv = torch.where(m, adv.to(dtype), 0.0)
    return logp, old_logp, adv, m


def aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean") -> torch.Tensor:
    """Reduce a (B, T) per-token loss over mask (B, T) to a scalar.

    - token_mean: sum over all response tokens / their count (DAPO).
    - seq_mean_token_mean: mean over responses of each response's token mean (GRPO);
      responses with no tokens are left out.
    - seq_mean_token_sum_norm: sum / (B * T) with T the padded length (Dr.GRPO's constant
      normaliser, independent of response lengths).
    An all-masked batch gives 0.
    """
    check_aggregation(mode)
    if not isinstance(per_token_loss, torch.Tensor) or per_token_loss.dim() != 2:
        raise ValueError(f"per_token_loss must be a tensor of shape (B, T), got {_shape_of(per_token_loss)}")
    if not isinstance(mask, torch.Tensor) or mask.shape != per_token_loss.shape:
        raise ValueError(f"mask must have the shape of per_token_loss {tuple(per_token_loss.shape)}, got {_shape_of(mask)}")
    m = mask.bool()
    loss = torch.where(m, per_token_loss, 0.0)
    if mode == "token_mean":
        return loss.sum() / m.sum().clamp_min(1)
    if mode == "seq_mean_token_mean":
        tokens = m.sum(-1)
        seq = loss.sum(-1) / tokens.clamp_min(1)
        return seq.sum() / (tokens > 0).sum().clamp_min(1)
    return loss.sum() / max(loss.numel(), 1)


# --- objectives ---------------------------------------------------------------------------


def _ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    return (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()


def _ppo_clip(ratio: torch.Tensor, adv: torch.Tensor, params: ClipParams) -> Terms:
    clipped_ratio = ratio.clamp(1 - params.eps_low, 1 + params.eps_high)
    surrogate, clipped_surrogate = ratio * adv, clipped_ratio * adv
    loss = -torch.minimum(surrogate, clipped_surrogate)
    with torch.no_grad():
        clipped = clipped_surrogate < surrogate
        weight = torch.where(clipped, clipped_ratio, ratio)
    return Terms(loss, ratio.detach(), weight, clipped)


def _clipped_is_weight(logp, ratio, adv, lo, hi, mask_mode: bool) -> Terms:
    """`-sg(w) * A * logp` with w = clip(r, lo, hi), or r with out-of-bound tokens dropped."""
    r = ratio.detach()
    outside = (r < lo) | (r > hi)
    weight = torch.where(outside, 0.0, r) if mask_mode else torch.clamp(r, lo, hi)
    return Terms(-weight * adv * logp, r, weight, outside)


@register_objective("grpo")
def grpo(logp, old_logp, adv, mask, params: ClipParams) -> Terms:
    """GRPO (arXiv 2402.03300): PPO-clip `-min(r*A, clip(r, 1-eps_low, 1+eps_high)*A)`, sequence-mean aggregation."""
    return _ppo_clip(_ratio(logp, old_logp), adv, params)


@register_objective("dr_grpo")
def dr_grpo(logp, old_logp, adv, mask, params: ClipParams) -> Terms:
    """Dr.GRPO (arXiv 2503.20783): PPO-clip, loss summed and divided by B * T (advantages without std: trainer)."""
    return _ppo_clip(_ratio(logp, old_logp), adv, params)


@register_objective("dapo")
def dapo(logp, old_logp, adv, mask, params: ClipParams) -> Terms:
    """DAPO (arXiv 2503.14476): PPO-clip with clip-higher (eps_high 0.28), token-mean aggregation."""
    return _ppo_clip(_ratio(logp, old_logp), adv, params)


@register_objective("cispo")
def cispo(logp, old_logp, adv, mask, params: ClipParams) -> Terms:
    """CISPO (arXiv 2506.13585): `-sg(clip(r, 1-eps_low, 1+eps_high)) * A * logp`; the gradient is never zeroed."""
    return _clipped_is_weight(logp, _ratio(logp, old_logp), adv, 1 - params.eps_low, 1 + params.eps_high, False)


@register_objective("gspo")
def gspo(logp, old_logp, adv, mask, params: ClipParams) -> Terms:
    """GSPO (arXiv 2507.18071): PPO-clip on the sequence ratio `exp(mean_t(logp - old_logp))` (GSPO-token form)."""
    tokens = mask.sum(-1, keepdim=True).clamp_min(1)
    seq_log_ratio = ((logp - old_logp).sum(-1, keepdim=True) / tokens).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    token_ratio = seq_log_ratio.detach().exp() * torch.exp(logp - logp.detach())  # value s_i, gradient per token
    return _ppo_clip(token_ratio, adv, params)


@register_objective("dispo")
def dispo(logp, old_logp, adv, mask, params: DispoParams) -> Terms:
    """DISPO (arXiv 2602.00983): `-sg(clip(r, lo, hi)) * A * logp`, bounds chosen per token by regime.

    Correct responses (A > 0) use [1 - eps_pos_down, 1 + eps_pos_up], incorrect ones
    (A < 0) [1 - eps_neg_down, 1 + eps_neg_up]; since lo <= 1 <= hi, only the upper bound
    can act on r >= 1 and only the lower on r < 1, one bound per regime. The gradient
    with respect to logp is `-w * A` on every token, zero only where A = 0 (or, with
    mask_mode, where the token was dropped).
    """
    pos = adv > 0
    lo = torch.full_like(logp, 1 - params.eps_neg_down).masked_fill(pos, 1 - params.eps_pos_down)
    hi = torch.full_like(logp, 1 + params.eps_neg_up).masked_fill(pos, 1 + params.eps_pos_up)
    return _clipped_is_weight(logp, _ratio(logp, old_logp), adv, lo, hi, params.mask_mode)
