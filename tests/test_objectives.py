"""Objectives against plain-Python per-token references, gradients, special cases,
registry and bad input.

Run: .venv/bin/python -m pytest tests/test_objectives.py -q
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from rich.console import Console

from workbench.core import objectives as obj
from workbench import params as declared_params
from workbench.core.objectives import (
    ClipParams,
    DispoParams,
    aggregate,
    describe_objectives,
    get_objective,
    get_spec,
    list_objectives,
    make_params,
    register_objective,
    render_objectives_table,
)
from workbench.core.regimes import REGIMES, regime_metrics

NAMES = ["cispo", "dapo", "dispo", "dr_grpo", "grpo", "gspo"]
SEEDS = [0, 1, 2]
SHAPES = [(4, 1), (6, 9), (16, 33)]
FAR = 2.5  # |log r| of the tokens pushed far outside every bound (r ~ 12 or ~ 0.08)


def same_metrics(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal dicts, NaN (an empty regime) equal to NaN."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def make_batch(seed: int, B: int, T: int):
    """Groups with A > 0, A < 0 and A = 0, ragged masks, one all-masked row, and in every
    regime tokens far outside any bound as well as near-on-policy ones."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g) * 4
    log_ratio = torch.randn(B, T, generator=g) * 0.15
    far = torch.rand(B, T, generator=g) < 0.3
    log_ratio = torch.where(far, torch.where(torch.rand(B, T, generator=g) < 0.5, FAR, -FAR), log_ratio)
    old_logp = logp - log_ratio
    adv = torch.randn(B, generator=g)
    adv[0], adv[1 % B] = 1.3, -0.7  # both signs present
    if B >= 4:
        adv[2] = 0.0  # a group where every response had the same reward
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    if B >= 4:
        mask[3] = 0.0  # an all-masked row
    old_logp = torch.where(mask.bool(), old_logp, torch.full_like(old_logp, float("nan")))  # padding garbage
    return logp, old_logp, adv, mask


def lists(*tensors):
    return [t.tolist() for t in tensors]


def ref_ratio(lp: float, olp: float) -> float:
    return math.exp(max(-20.0, min(20.0, lp - olp)))


def ref_ppo_token(r: float, a: float, eps_low: float, eps_high: float):
    """PPO-clip per token: (loss, weight, clipped)."""
    c = min(max(r, 1 - eps_low), 1 + eps_high)
    clipped = c * a < r * a
    return -min(r * a, c * a), (c if clipped else r), clipped


def ref_is_token(r: float, a: float, lp: float, lo: float, hi: float, mask_mode: bool):
    """Clipped importance weight per token (CISPO/DISPO): (loss, weight, clipped)."""
    outside = r < lo or r > hi
    w = (0.0 if outside else r) if mask_mode else min(max(r, lo), hi)
    return -w * a * lp, w, outside


def reference(name: str, params, logp, old_logp, adv, mask):
    """Plain-Python per-token loss, ratio, weight and clipped of objective `name`."""
    B, T = len(logp), len(logp[0])
    out = {k: [[0.0] * T for _ in range(B)] for k in ("loss", "ratio", "weight", "clipped")}
    for b in range(B):
        n = sum(mask[b])
        seq_ratio = None
        if name == "gspo":
            mean = sum(logp[b][t] - old_logp[b][t] for t in range(T) if mask[b][t]) / max(n, 1)
            seq_ratio = math.exp(max(-20.0, min(20.0, mean)))
        for t in range(T):
            if not mask[b][t]:
                out["ratio"][b][t] = 1.0
                continue
            a, lp = adv[b], logp[b][t]
            r = seq_ratio if name == "gspo" else ref_ratio(lp, old_logp[b][t])
            if name in ("grpo", "dr_grpo", "dapo", "gspo"):
                loss, w, c = ref_ppo_token(r, a, params.eps_low, params.eps_high)
            elif name == "cispo":
                loss, w, c = ref_is_token(r, a, lp, 1 - params.eps_low, 1 + params.eps_high, False)
            else:
                up, down = (params.eps_pos_up, params.eps_pos_down) if a > 0 else (params.eps_neg_up, params.eps_neg_down)
                loss, w, c = ref_is_token(r, a, lp, 1 - down, 1 + up, params.mask_mode)
            for key, value in zip(("loss", "ratio", "weight", "clipped"), (loss, r, w, c)):
                out[key][b][t] = value
    return out


PARAMS = {
    "grpo": [ClipParams(), ClipParams(0.1, math.inf)],
    "dr_grpo": [ClipParams(), ClipParams(1.0, 0.05)],
    "dapo": [ClipParams(0.2, 0.28)],
    "cispo": [ClipParams(1.0, 0.28), ClipParams(0.3, 0.1)],
    "gspo": [ClipParams(3e-4, 4e-4), ClipParams(0.05, 0.1)],
    "dispo": [
        DispoParams(),
        DispoParams(eps_pos_up=0.5, eps_pos_down=0.05, eps_neg_up=0.01, eps_neg_down=2.0),
        DispoParams(eps_pos_up=math.inf, eps_pos_down=0.3, eps_neg_up=0.1, eps_neg_down=0.4, mask_mode=True),
    ],
}
CASES = [(name, i) for name in NAMES for i in range(len(PARAMS[name]))]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name,which", CASES)
def test_objective_matches_reference(name, which, seed, shape):
    params = PARAMS[name][which]
    logp, old_logp, adv, mask = make_batch(seed, *shape)
    entropy = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    loss, metrics = get_objective(name)(logp, old_logp, adv, mask, params, entropy=entropy)
    ref = reference(name, params, *lists(logp, old_logp, adv, mask))

    assert loss.shape == shape and torch.isfinite(loss).all()
    assert torch.allclose(loss, torch.tensor(ref["loss"]), rtol=1e-5, atol=1e-6)
    assert (loss[mask == 0] == 0).all()
    adv_bt = adv[:, None].expand(shape)
    want = regime_metrics(torch.tensor(ref["ratio"]), torch.tensor(ref["weight"]), torch.tensor(ref["clipped"]), adv_bt, mask, entropy)
    assert set(metrics) == set(want)
    for key in want:
        assert metrics[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6, nan_ok=True), key


def test_batches_reach_far_outside_bounds_in_every_regime():
    """Guards the reference tests above: every regime gets tokens its bounds clip."""
    logp, old_logp, adv, mask = make_batch(0, 16, 33)
    _, metrics = get_objective("dispo")(logp, old_logp, adv, mask, DispoParams())
    for g in REGIMES:
        assert metrics[f"regime/{g}/token_frac"] > 0.05
        assert 0.1 < metrics[f"regime/{g}/clip_frac"] < 0.9
        assert metrics[f"regime/{g}/clip_mass"] > 0


def test_advantages_per_token_equal_broadcast_per_sequence():
    logp, old_logp, adv, mask = make_batch(1, 6, 9)
    for name in NAMES:
        a, ma = get_objective(name)(logp, old_logp, adv, mask)
        b, mb = get_objective(name)(logp, old_logp, adv[:, None].expand(6, 9).clone(), mask)
        assert torch.equal(a, b) and same_metrics(ma, mb)


def test_half_precision_log_probs_are_upcast():
    logp, old_logp, adv, mask = make_batch(0, 8, 12)
    lp16, old16 = logp.bfloat16(), old_logp.bfloat16()
    for name in NAMES:
        x = lp16.clone().requires_grad_(True)
        loss, metrics = get_objective(name)(x, old16, adv, mask)
        want, want_metrics = get_objective(name)(lp16.float(), old16.float(), adv, mask)
        assert loss.dtype == torch.float32 and torch.equal(loss, want) and same_metrics(metrics, want_metrics)
        loss.sum().backward()
        assert x.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["dispo", "grpo"])
def test_float64_keeps_its_precision(name):
    logp, old_logp, adv, mask = (t.double() for t in make_batch(1, 8, 12))
    params = make_params(name, {})
    loss, _ = get_objective(name)(logp, old_logp, adv, mask, params)
    ref = reference(name, params, *lists(logp, old_logp, adv, mask))
    assert loss.dtype == torch.float64
    assert torch.allclose(loss, torch.tensor(ref["loss"], dtype=torch.float64), rtol=1e-12, atol=1e-14)


# --- gradients ----------------------------------------------------------------------------


def grad_of(name, params, logp, old_logp, adv, mask):
    x = logp.clone().requires_grad_(True)
    loss, _ = get_objective(name)(x, old_logp, adv, mask, params)
    loss.sum().backward()
    return x.grad


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("params", [DispoParams(), DispoParams(0.5, 0.05, 0.01, 0.6)], ids=["default", "asymmetric"])
def test_dispo_gradient_is_clipped_weight_times_advantage(seed, params):
    logp, old_logp, adv, mask = make_batch(seed, 16, 33)
    grad = grad_of("dispo", params, logp, old_logp, adv, mask)
    L, O, A, M = lists(logp, old_logp, adv, mask)
    seen = set()
    for b in range(16):
        for t in range(33):
            want = 0.0
            if M[b][t]:
                r = ref_ratio(L[b][t], O[b][t])
                up, down = (params.eps_pos_up, params.eps_pos_down) if A[b] > 0 else (params.eps_neg_up, params.eps_neg_down)
                w = min(max(r, 1 - down), 1 + up)
                want = -w * A[b]
                if A[b] != 0 and w != r:
                    seen.add(("pos" if A[b] > 0 else "neg") + ("_up" if r >= 1 else "_down"))
                    assert grad[b, t] != 0  # clipping never zeroes DISPO's gradient
            assert grad[b, t].item() == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert seen == set(REGIMES)  # the check covered a clipped token in every regime


def test_dispo_mask_mode_gradient_drops_out_of_bound_tokens():
    params = DispoParams(0.1, 0.1, 0.3, 0.3, mask_mode=True)
    logp, old_logp, adv, mask = make_batch(0, 16, 33)
    grad = grad_of("dispo", params, logp, old_logp, adv, mask)
    r = torch.exp(logp - old_logp)
    hi = torch.where(adv > 0, 1.1, 1.3)[:, None]
    lo = torch.where(adv > 0, 0.9, 0.7)[:, None]
    inside = (r >= lo) & (r <= hi) & mask.bool()
    assert torch.allclose(grad, torch.where(inside, -r * adv[:, None], 0.0), atol=1e-6)
    assert (~inside & mask.bool() & (adv[:, None] != 0)).any()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["dapo", "grpo"])
def test_ppo_gradient_is_zero_exactly_where_clip_binds(name, seed):
    params = get_spec(name).default_params
    logp, old_logp, adv, mask = make_batch(seed, 16, 33)
    grad = grad_of(name, params, logp, old_logp, adv, mask)
    L, O, A, M = lists(logp, old_logp, adv, mask)
    binds = 0
    for b in range(16):
        for t in range(33):
            if not M[b][t]:
                assert grad[b, t] == 0
                continue
            r = ref_ratio(L[b][t], O[b][t])
            bound = (A[b] > 0 and r > 1 + params.eps_high) or (A[b] < 0 and r < 1 - params.eps_low)
            binds += bound
            want = 0.0 if bound else -r * A[b]
            assert grad[b, t].item() == pytest.approx(want, rel=1e-5, abs=1e-7)
            assert (grad[b, t] == 0) == (bound or A[b] == 0)
    assert binds > 10


def test_gspo_gradient_equals_sequence_level_objective():
    params = ClipParams(0.05, 0.1)
    logp, old_logp, adv, mask = make_batch(2, 8, 12)
    old_logp = torch.where(mask.bool(), old_logp, 0.0)
    x = logp.clone().requires_grad_(True)
    loss, _ = get_objective("gspo")(x, old_logp, adv, mask, params)
    aggregate(loss, mask, "seq_mean_token_mean").backward()

    y = logp.clone().requires_grad_(True)
    n = mask.sum(-1)
    s = torch.exp(((y - old_logp) * mask).sum(-1) / n.clamp_min(1))
    seq_loss = -torch.minimum(s * adv, s.clamp(0.95, 1.1) * adv)
    seq_loss[n > 0].mean().backward()
    assert torch.allclose(x.grad, y.grad, atol=1e-6)
    assert (x.grad[mask.sum(-1) > 0] != 0).any()


# --- special cases ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("up,down", [(0.2, 0.2), (0.28, 1.0), (0.05, 0.5), (math.inf, 0.1)])
def test_dispo_with_equal_bounds_is_cispo(seed, up, down):
    logp, old_logp, adv, mask = make_batch(seed, 12, 20)
    d_loss, d_metrics = get_objective("dispo")(logp, old_logp, adv, mask, DispoParams(up, down, up, down))
    c_loss, c_metrics = get_objective("cispo")(logp, old_logp, adv, mask, ClipParams(eps_low=down, eps_high=up))
    assert torch.equal(d_loss, c_loss)
    assert same_metrics(d_metrics, c_metrics)
    d_grad = grad_of("dispo", DispoParams(up, down, up, down), logp, old_logp, adv, mask)
    assert torch.equal(d_grad, grad_of("cispo", ClipParams(down, up), logp, old_logp, adv, mask))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("down", [1.0, 5.0, math.inf])
def test_dispo_all_disabled_is_importance_weighted_reinforce(seed, down):
    logp, old_logp, adv, mask = make_batch(seed, 12, 20)
    params = DispoParams(math.inf, down, math.inf, down)
    x = logp.clone().requires_grad_(True)
    loss, metrics = get_objective("dispo")(x, old_logp, adv, mask, params)
    m = mask.bool()
    r = torch.exp(torch.where(m, logp - old_logp, 0.0))
    want = torch.where(m, -r * adv[:, None] * logp, 0.0)
    assert torch.allclose(loss, want, rtol=1e-6, atol=1e-7)
    loss.sum().backward()
    assert torch.allclose(x.grad, torch.where(m, -r * adv[:, None], 0.0), rtol=1e-6, atol=1e-7)
    assert all(metrics[f"regime/{g}/clip_frac"] == 0.0 for g in REGIMES)


@pytest.mark.parametrize("seed", SEEDS)
def test_dapo_is_grpo_clip_higher_with_token_mean(seed):
    logp, old_logp, adv, mask = make_batch(seed, 12, 20)
    d_loss, d_metrics = get_objective("dapo")(logp, old_logp, adv, mask)
    g_loss, g_metrics = get_objective("grpo")(logp, old_logp, adv, mask, ClipParams(eps_low=0.2, eps_high=0.28))
    assert torch.equal(d_loss, g_loss) and same_metrics(d_metrics, g_metrics)
    dapo_spec = get_spec("dapo")
    assert dapo_spec.aggregation == "token_mean"
    assert aggregate(d_loss, mask, dapo_spec.aggregation) == aggregate(g_loss, mask, "token_mean")
    # ... and differs from plain GRPO, so the comparison above is not vacuous.
    assert not torch.equal(d_loss, get_objective("grpo")(logp, old_logp, adv, mask)[0])


def test_on_policy_nothing_is_clipped():
    logp, _, adv, mask = make_batch(0, 8, 10)
    for name in NAMES:
        _, metrics = get_objective(name)(logp, logp, adv, mask)
        assert metrics["ratio/abs_dev_mean"] == 0.0 and metrics["ratio/max"] == 1.0
        assert metrics["regime/pos_up/clip_frac"] == metrics["regime/neg_up/clip_frac"] == 0.0
        assert metrics["regime/pos_down/token_frac"] == metrics["regime/neg_down/token_frac"] == 0.0
        assert math.isnan(metrics["regime/pos_down/clip_frac"])  # empty regime: undefined, not 0


def test_huge_log_ratio_stays_finite():
    logp = torch.tensor([[0.0, -200.0]])
    old_logp = torch.tensor([[-200.0, 0.0]])
    for name in NAMES:
        for a in (1.0, -1.0, 0.0):
            loss, metrics = get_objective(name)(logp, old_logp, torch.tensor([a]), torch.ones(1, 2), make_params(name, {}))
            assert torch.isfinite(loss).all() and not any(math.isinf(v) for v in metrics.values())
        inf_params = make_params(name, {"eps_pos_up": math.inf, "eps_neg_up": math.inf} if name == "dispo" else {"eps_high": math.inf})
        loss, _ = get_objective(name)(logp, old_logp, torch.tensor([-1.0]), torch.ones(1, 2), inf_params)
        assert torch.isfinite(loss).all()


# --- aggregation --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_aggregate_matches_reference(seed):
    logp, _, _, mask = make_batch(seed, 6, 9)
    loss = torch.where(mask.bool(), logp, 0.0)
    L, M = lists(loss, mask)
    total = sum(L[b][t] for b in range(6) for t in range(9) if M[b][t])
    rows = [sum(L[b][t] for t in range(9) if M[b][t]) / sum(M[b]) for b in range(6) if sum(M[b])]
    assert aggregate(loss, mask, "token_mean").item() == pytest.approx(total / sum(map(sum, M)), rel=1e-5)
    assert aggregate(loss, mask, "seq_mean_token_mean").item() == pytest.approx(sum(rows) / len(rows), rel=1e-5)
    assert aggregate(loss, mask, "seq_mean_token_sum_norm").item() == pytest.approx(total / (6 * 9), rel=1e-5)
    assert aggregate(loss, torch.zeros(6, 9), "seq_mean_token_mean").item() == 0.0


# --- registry, params, table --------------------------------------------------------------


def test_registry_lists_the_six_objectives():
    assert list_objectives() == NAMES
    expected = {"grpo": "seq_mean_token_mean", "dr_grpo": "seq_mean_token_sum_norm", "dapo": "token_mean",
                "cispo": "token_mean", "gspo": "seq_mean_token_mean", "dispo": "token_mean"}
    assert {n: get_spec(n).aggregation for n in NAMES} == expected
    assert get_spec("dapo").default_params == ClipParams(0.2, 0.28)
    assert get_spec("grpo").default_params == ClipParams(0.2, 0.2)
    assert get_spec("dispo").default_params == DispoParams()
    assert get_spec("cispo").default_params.eps_low >= 1  # lower bound off, as in MiniMax-M1
    assert get_spec("gspo").default_params == ClipParams(3e-4, 4e-4)


def test_unknown_objective_lists_valid_names():
    with pytest.raises(ValueError, match="unknown objective 'ppo'") as err:
        get_objective("ppo")
    assert all(name in str(err.value) for name in NAMES)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="'dispo' is already registered"):
        register_objective("dispo", params_cls=DispoParams, aggregation="token_mean", paper="x")
    try:
        deco = register_objective("tmp_probe", params_cls=ClipParams, aggregation="token_mean", paper="x")
        deco(lambda *a: None)
        with pytest.raises(ValueError, match="already registered"):
            deco(lambda *a: None)
        with pytest.raises(ValueError, match="already registered"):
            register_objective("tmp_probe", params_cls=ClipParams, aggregation="token_mean", paper="x")
    finally:
        obj._REGISTRY.pop("tmp_probe", None)
        declared_params._DECLARED.pop("tmp_probe", None)
    with pytest.raises(ValueError, match="aggregation"):
        register_objective("tmp_bad", params_cls=ClipParams, aggregation="mean", paper="x")


def test_make_params():
    assert make_params("dapo", {}) == ClipParams(0.2, 0.28)
    assert make_params("dapo", {"eps_high": 1}) == ClipParams(0.2, 1.0)
    p = make_params("dispo", {"eps_neg_up": math.inf, "mask_mode": True})
    assert p.eps_neg_up == math.inf and p.mask_mode is True and p.eps_pos_up == 0.2
    with pytest.raises(ValueError, match=r"unknown parameter 'eps_up'.*allowed: eps_pos_up, eps_pos_down, eps_neg_up, eps_neg_down, mask_mode"):
        make_params("dispo", {"eps_up": 0.1})
    with pytest.raises(ValueError, match="'mask_mode'.*true or false"):
        make_params("dispo", {"mask_mode": 1.0})
    with pytest.raises(ValueError, match="'eps_low'.*number"):
        make_params("grpo", {"eps_low": True})
    with pytest.raises(ValueError, match="eps_neg_down must be a number >= 0"):
        make_params("dispo", {"eps_neg_down": -0.1})
    with pytest.raises(ValueError, match="unknown objective"):
        make_params("nope", {})


def test_describe_and_render_table():
    rows = describe_objectives()
    assert [r["name"] for r in rows] == NAMES
    dispo_row = rows[NAMES.index("dispo")]
    assert dispo_row["params"] == {"eps_pos_up": 0.2, "eps_pos_down": 0.2, "eps_neg_up": 0.2, "eps_neg_down": 0.2, "mask_mode": False}
    assert dispo_row["aggregation"] == "token_mean" and "2602.00983" in dispo_row["paper"]
    console = Console(record=True, width=200)
    console.print(render_objectives_table())
    text = console.export_text()
    assert all(n in text for n in NAMES) and "eps_high = 0.28" in text and "seq_mean_token_sum_norm" in text


# --- metric keys --------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_metric_keys(name):
    logp, old_logp, adv, mask = make_batch(0, 16, 33)  # every regime populated: no NaN expected
    per_regime = ["token_frac", "clip_frac", "weight_mean", "clip_mass"]
    for entropy in (None, torch.rand(16, 33)):
        _, metrics = get_objective(name)(logp, old_logp, adv, mask, entropy=entropy)
        stats = per_regime + (["entropy"] if entropy is not None else [])
        want = {f"regime/{g}/{s}" for g in REGIMES for s in stats} | {"ratio/mean", "ratio/max", "ratio/abs_dev_mean"}
        want |= {"entropy/mean"} if entropy is not None else set()  # token-weighted, with the regime sums
        assert set(metrics) == want
        for key, value in metrics.items():
            assert re.fullmatch(r"[a-z0-9_/.]+", key), key
            assert type(value) is float and math.isfinite(value), key


# --- bad input ----------------------------------------------------------------------------


def good():
    logp, old_logp, adv, mask = make_batch(0, 4, 6)
    return dict(logp=logp, old_logp=old_logp, advantages=adv, mask=mask)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"old_logp": torch.zeros(6, 4)}, r"old_logp must be a tensor of shape \(B, T\) = \(4, 6\)"),
        ({"mask": torch.ones(6, 4)}, r"mask must be a tensor of shape \(B, T\) = \(4, 6\)"),
        ({"advantages": torch.zeros(6)}, r"advantages must be a tensor of shape \(B,\) = \(4,\) or \(B, T\)"),
        ({"advantages": torch.zeros(6, 4)}, r"advantages must be"),
        ({"logp": torch.zeros(4)}, r"logp must be a float tensor of shape \(B, T\)"),
        ({"logp": torch.zeros(4, 6, dtype=torch.long)}, r"logp must be a float tensor"),
        ({"mask": torch.full((4, 6), 0.5)}, r"mask must hold only 0 and 1"),
        ({"entropy": torch.zeros(6, 4)}, r"entropy must be a tensor of shape \(B, T\)"),
        ({"params": DispoParams()}, r"params of 'grpo' must be ClipParams, got DispoParams"),
    ],
)
def test_bad_shapes_and_types(change, match):
    kwargs = good() | change
    with pytest.raises(ValueError, match=match):
        get_objective("grpo")(**kwargs)


@pytest.mark.parametrize("arg", ["logp", "old_logp", "advantages", "entropy"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_at_response_tokens(arg, bad):
    kwargs = good() | {"entropy": torch.zeros(4, 6)}
    x = kwargs[arg].clone()
    x[0] = bad  # row 0 has response tokens
    kwargs[arg] = x
    with pytest.raises(ValueError, match=f"{arg} must be finite at masked-in tokens"):
        get_objective("dispo")(**kwargs)


def test_garbage_in_padding_is_ignored():
    kwargs = good()  # old_logp is NaN on padding by construction
    kwargs["logp"] = torch.where(kwargs["mask"].bool(), kwargs["logp"], float("-inf")).requires_grad_(True)
    for name in NAMES:
        loss, metrics = get_objective(name)(**kwargs)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(kwargs["logp"].grad).all()
        assert not any(math.isinf(v) for v in metrics.values())


@pytest.mark.parametrize("cls,kwargs,field", [
    (ClipParams, {"eps_low": -0.1}, "eps_low"),
    (ClipParams, {"eps_high": float("nan")}, "eps_high"),
    (DispoParams, {"eps_pos_up": -1.0}, "eps_pos_up"),
    (DispoParams, {"eps_neg_down": "0.2"}, "eps_neg_down"),
    (DispoParams, {"mask_mode": "yes"}, "mask_mode"),
])
def test_bad_params(cls, kwargs, field):
    with pytest.raises(ValueError, match=f"{cls.__name__}.{field} must be"):
        cls(**kwargs)


def test_params_are_frozen():
    with pytest.raises(AttributeError):
        DispoParams().eps_pos_up = 0.5  # type: ignore[misc]


def test_bad_aggregation():
    loss, mask = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="unknown aggregation mode 'mean'; valid: token_mean, seq_mean_token_mean, seq_mean_token_sum_norm"):
        aggregate(loss, mask, "mean")
    with pytest.raises(ValueError, match=r"mask must have the shape of per_token_loss \(2, 3\)"):
        aggregate(loss, torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"per_token_loss must be a tensor of shape \(B, T\)"):
        aggregate(torch.zeros(3), torch.ones(3))
