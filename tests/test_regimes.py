"""Regime masks, token entropy and regime metrics against plain-Python loops.

Run: .venv/bin/python -m pytest tests/test_regimes.py -q
"""

from __future__ import annotations

import math

import pytest
import torch

from workbench.core.regimes import REGIMES, regime_masks, regime_metrics, token_entropy


def ref_regime(r: float, a: float, m: float) -> str | None:
    if not m or a == 0:
        return None
    return ("pos" if a > 0 else "neg") + ("_up" if r >= 1 else "_down")


def ref_metrics(ratio, weight, clipped, adv, mask, entropy=None) -> dict[str, float]:
    """Token-by-token reference of `regime_metrics` (empty denominators give NaN)."""
    B, T = len(ratio), len(ratio[0])
    acc = {g: dict(n=0.0, clipped=0.0, w=0.0, moved=0.0, r=0.0, h=0.0) for g in REGIMES}
    n_nonzero = n_tokens = r_sum = dev_sum = 0.0
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
            g = ref_regime(r, adv[b][t], mask[b][t])
            if g is None:
                continue
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
    out["ratio/mean"] = div(r_sum, n_tokens)
    out["ratio/max"] = r_max if n_tokens else math.nan
    out["ratio/abs_dev_mean"] = div(dev_sum, n_tokens)
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


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(2, 1), (5, 8), (12, 31)])
def test_regime_metrics_match_reference(seed, shape):
    ratio, weight, clipped, adv, mask, entropy = random_inputs(seed, *shape)
    got = regime_metrics(ratio, weight, clipped, adv, mask, entropy)
    lists = [x.tolist() for x in (ratio, weight, clipped, adv, mask, entropy)]
    assert_metrics_close(got, ref_metrics(*lists))
    assert "regime/pos_up/entropy" not in regime_metrics(ratio, weight, clipped, adv, mask)


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
