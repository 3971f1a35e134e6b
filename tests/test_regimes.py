"""Regime masks, token entropy, regime metrics and the entropy push against plain-Python loops;
the accumulator over uneven pieces equals the whole batch.

Run: .venv/bin/python -m pytest tests/test_regimes.py -q
"""

from __future__ import annotations

import math

import pytest
import torch

from workbench.core.regimes import REGIMES, RegimeAccumulator, regime_masks, regime_metrics, token_entropy


def ref_regime(r: float, a: float, m: float) -> str | None:
    if not m or a == 0:
        return None
    return ("pos" if a > 0 else "neg") + ("_up" if r >= 1 else "_down")


def ref_metrics(ratio, weight, clipped, adv, mask, entropy=None, logp=None, coef=None) -> dict[str, float]:
    """Token-by-token reference of `regime_metrics` (empty denominators give NaN); the entropy push
    as a two-pass covariance: centre l and u over the regime tokens, then sum per part."""
    B, T = len(ratio), len(ratio[0])
    acc = {g: dict(n=0.0, clipped=0.0, w=0.0, moved=0.0, r=0.0, h=0.0) for g in REGIMES}
    n_nonzero = n_tokens = r_sum = dev_sum = h_all = 0.0
    regime_tokens = []  # (regime, clipped, l, u)
    r_max = -math.inf
    for b in range(B):
        for t in range(T):
            if not mask[b][t]:
                continue
            r, w = ratio[b][t], weight[b][t]
            n_tokens += 1
            r_sum += r
            dev_sum += abs(r - 1)
            r_max = max(r_max, r)
            if entropy is not None:
                h_all += entropy[b][t]
            g = ref_regime(r, adv[b][t], mask[b][t])
            if g is None:
                continue
            if logp is not None:
                regime_tokens.append((g, bool(clipped[b][t]), logp[b][t], coef[b][t]))
            n_nonzero += 1
            a = acc[g]
            a["n"] += 1
            a["clipped"] += float(clipped[b][t])
            a["w"] += w
            a["moved"] += abs(w - r)
            a["r"] += r
            if entropy is not None:
                a["h"] += entropy[b][t]

    def div(x, y):
        return x / y if y > 0 else math.nan

    out = {}
    for g, a in acc.items():
        out[f"regime/{g}/token_frac"] = div(a["n"], n_nonzero)
        out[f"regime/{g}/clip_frac"] = div(a["clipped"], a["n"])
        out[f"regime/{g}/weight_mean"] = div(a["w"], a["n"])
        out[f"regime/{g}/clip_mass"] = div(a["moved"], a["r"])
        if entropy is not None:
            out[f"regime/{g}/entropy"] = div(a["h"], a["n"])
    if logp is not None:
        n = len(regime_tokens)
        l_bar = sum(x[2] for x in regime_tokens) / n if n else math.nan
        u_bar = sum(x[3] for x in regime_tokens) / n if n else math.nan
        for g in REGIMES:
            for key, keep in (("entropy_push", (False, True)), ("entropy_push_clipped", (True,))):
                part = [(l - l_bar) * (u - u_bar) for gg, c, l, u in regime_tokens if gg == g and c in keep]
                out[f"regime/{g}/{key}"] = -sum(part) / n if n else math.nan
    out["ratio/mean"] = div(r_sum, n_tokens)
    out["ratio/max"] = r_max if n_tokens else math.nan
    out["ratio/abs_dev_mean"] = div(dev_sum, n_tokens)
    if entropy is not None:
        out["entropy/mean"] = div(h_all, n_tokens)
    return out


def assert_metrics_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert isinstance(got[key], float), key
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key


def random_inputs(seed: int, B: int, T: int):
    g = torch.Generator().manual_seed(seed)
    ratio = torch.exp(torch.randn(B, T, generator=g) * 0.5)
    ratio[0, 0] = 1.0  # exactly on-policy: belongs to an "up" regime
    weight = ratio.clamp(0.8, 1.2)
    clipped = weight != ratio
    adv = torch.randn(B, generator=g).sign()[:, None].expand(B, T).clone()
    adv[-1] = 0.0  # a zero-advantage group: in no regime
    mask = (torch.rand(B, T, generator=g) > 0.2).float()
    mask[0, 0] = 1.0
    entropy = torch.rand(B, T, generator=g) * 3
    return ratio, weight, clipped, adv, mask, entropy


def random_push_inputs(seed: int, B: int, T: int):
    """random_inputs plus logp (<= 0) and a coefficient u = w * A, zero where clipped half the time."""
    ratio, weight, clipped, adv, mask, entropy = random_inputs(seed, B, T)
    g = torch.Generator().manual_seed(seed + 100)
    logp = -torch.rand(B, T, generator=g) * 4
    stopped = clipped & (torch.rand(B, T, generator=g) > 0.5)
    coef = torch.where(stopped, 0.0, weight * adv * (1 + torch.rand(B, T, generator=g)))
    return ratio, weight, clipped, adv, mask, entropy, logp, coef


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(2, 1), (5, 8), (12, 31)])
def test_regime_metrics_match_reference(seed, shape):
    ratio, weight, clipped, adv, mask, entropy = random_inputs(seed, *shape)
    got = regime_metrics(ratio, weight, clipped, adv, mask, entropy)
    lists = [x.tolist() for x in (ratio, weight, clipped, adv, mask, entropy)]
    assert_metrics_close(got, ref_metrics(*lists))
    assert "regime/pos_up/entropy" not in regime_metrics(ratio, weight, clipped, adv, mask)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_push_matches_two_pass_covariance_and_its_parts_add_up(seed):
    inputs = random_push_inputs(seed, 9, 13)
    got = regime_metrics(*inputs)
    assert_metrics_close(got, ref_metrics(*[x.tolist() for x in inputs]))
    # The four regimes' pushes add up to minus the covariance over all regime tokens.
    ratio, _, _, adv, mask, _, logp, coef = inputs
    sel = mask.bool() & (adv != 0)
    lp, u = logp[sel].double(), coef[sel].double()
    whole = -((lp - lp.mean()) * (u - u.mean())).mean().item()
    assert sum(got[f"regime/{g}/entropy_push"] for g in REGIMES) == pytest.approx(whole, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accumulator_over_uneven_pieces_equals_the_whole_batch(seed):
    """Token-weighted: sums over pieces of 1, 2 and 9 rows (and a padded-width piece) give the
    whole batch's statistics, which the mean of per-piece statistics does not."""
    inputs = random_push_inputs(seed, 12, 17)
    inputs[4][:3, 4:] = 0  # short responses in the first rows: pieces differ in token counts
    want = regime_metrics(*inputs)
    acc = RegimeAccumulator()
    for rows in (slice(0, 1), slice(1, 3), slice(3, 12)):
        acc.add(*(x[rows] for x in inputs))
    got = acc.result()
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12, nan_ok=True), k
    pieces = [regime_metrics(*(x[rows] for x in inputs)) for rows in (slice(0, 1), slice(1, 3), slice(3, 12))]
    key = "regime/pos_up/clip_frac"
    defined = [p[key] for p in pieces if not math.isnan(p[key])]
    assert abs(sum(defined) / len(defined) - want[key]) > 1e-3 or len(defined) < 2


def test_accumulator_refuses_pieces_with_different_inputs():
    ratio, weight, clipped, adv, mask, entropy = random_inputs(0, 3, 4)
    acc = RegimeAccumulator()
    acc.add(ratio, weight, clipped, adv, mask, entropy)
    with pytest.raises(ValueError, match="same inputs"):
        acc.add(ratio, weight, clipped, adv, mask)
    assert RegimeAccumulator().result() == {}


@pytest.mark.parametrize("seed", [0, 1])
def test_regimes_partition_nonzero_advantage_tokens(seed):
    ratio, _, _, adv, mask, _ = random_inputs(seed, 6, 10)
    masks = regime_masks(ratio, adv, mask.bool())
    assert masks.shape == (4, 6, 10)
    assert masks.sum(0).max() <= 1  # no token in two regimes
    assert torch.equal(masks.any(0), mask.bool() & (adv != 0))
    for i, name in enumerate(REGIMES):
        for b in range(6):
            for t in range(10):
                assert bool(masks[i, b, t]) == (ref_regime(ratio[b, t].item(), adv[b, t].item(), mask[b, t].item()) == name)
    assert masks[REGIMES.index("pos_up"), 0, 0] or masks[REGIMES.index("neg_up"), 0, 0] or adv[0, 0] == 0
    metrics = regime_metrics(ratio, ratio, torch.zeros_like(mask, dtype=torch.bool), adv, mask)
    assert sum(metrics[f"regime/{g}/token_frac"] for g in REGIMES) == pytest.approx(1.0)


def test_ratio_exactly_one_is_up():
    ratio = torch.ones(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    masks = regime_masks(ratio, adv, torch.ones(1, 2, dtype=torch.bool))
    assert masks[REGIMES.index("pos_up"), 0, 0] and masks[REGIMES.index("neg_up"), 0, 1]
    assert masks.sum() == 2


def test_empty_regimes_and_all_masked_report_nan():
    ratio = torch.full((2, 3), 2.0)
    adv = torch.ones(2, 3)
    mask = torch.ones(2, 3)
    got = regime_metrics(ratio, ratio, torch.zeros(2, 3, dtype=torch.bool), adv, mask)
    assert got["regime/pos_up/token_frac"] == 1.0 and got["regime/pos_up/weight_mean"] == 2.0
    assert got["regime/pos_up/clip_frac"] == 0.0 and got["regime/pos_up/clip_mass"] == 0.0
    for g in ("pos_down", "neg_up", "neg_down"):
        assert got[f"regime/{g}/token_frac"] == 0.0
        for stat in ("clip_frac", "weight_mean", "clip_mass"):
            assert math.isnan(got[f"regime/{g}/{stat}"])
    nothing = regime_metrics(ratio, ratio, torch.ones(2, 3, dtype=torch.bool), adv, torch.zeros(2, 3))
    assert all(math.isnan(v) for v in nothing.values())


def test_padding_garbage_is_ignored():
    ratio = torch.tensor([[1.5, float("nan"), 1e30]])
    mask = torch.tensor([[1.0, 0.0, 0.0]])
    got = regime_metrics(ratio, ratio, torch.zeros(1, 3, dtype=torch.bool), torch.ones(1, 3), mask, torch.tensor([[0.5, float("inf"), 1.0]]))
    assert got["ratio/max"] == 1.5 and got["ratio/mean"] == 1.5
    assert got["ratio/abs_dev_mean"] == pytest.approx(0.5)
    assert got["regime/pos_up/entropy"] == 0.5


def test_regime_metrics_rejects_mismatched_shapes():
    ratio = torch.ones(2, 3)
    with pytest.raises(ValueError, match="mask"):
        regime_metrics(ratio, ratio, ratio.bool(), ratio, torch.ones(3, 2))


def ref_entropy(row: list[float], temperature: float) -> float:
    z = [x / temperature for x in row]
    top = max(z)
    log_norm = top + math.log(sum(math.exp(x - top) for x in z))
    return -sum(math.exp(x - log_norm) * (x - log_norm) for x in z)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_token_entropy_matches_reference(temperature):
    logits = torch.randn(3, 4, 11, generator=torch.Generator().manual_seed(0)) * 3
    got = token_entropy(logits, temperature)
    assert got.shape == (3, 4) and got.dtype == torch.float32
    for b in range(3):
        for t in range(4):
            assert got[b, t].item() == pytest.approx(ref_entropy(logits[b, t].tolist(), temperature), rel=1e-5, abs=1e-6)


def test_token_entropy_is_stable():
    uniform = torch.zeros(1, 2, 50)
    assert torch.allclose(token_entropy(uniform), torch.full((1, 2), math.log(50)))
    huge = torch.randn(1, 2, 7) + 1e4  # exp would overflow without log_softmax
    assert torch.allclose(token_entropy(huge), token_entropy(huge - 1e4), atol=1e-3)
    filtered = torch.tensor([[[0.0, 0.0, -math.inf, -math.inf]]])
    assert token_entropy(filtered).item() == pytest.approx(math.log(2))
    assert token_entropy(torch.randn(2, 3, 5, dtype=torch.bfloat16)).isfinite().all()


def test_token_entropy_bad_input():
    with pytest.raises(ValueError, match=r"logits must be a \(B, T, V\)"):
        token_entropy(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="temperature"):
        token_entropy(torch.zeros(1, 2, 5), temperature=0.0)
