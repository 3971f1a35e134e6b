"""The entropy push predicts the entropy change of a step, to first order, on a tabular softmax.

Setting (module docstring of workbench.core.regimes): S states, K actions, logits z(s, .);
the batch holds each (state, action) token exactly n * pi(a|s) times (rational probabilities),
so batch averages are expectations under pi. The objective is cispo (bounds independent of
the advantage's sign), evaluated through `objective_terms`, and u = -d loss / d logp from
`logp_coef`. The advantages are centred so that E_pi[u | s] = 0 in every state, which removes
the between-state term of the batch-centred covariance. A natural-gradient step moves the
logits by dz(s, a) = eta * u(s, a); the exact entropy change (mean over tokens' states) must
equal eta * (sum of the four regimes' pushes) up to O(eta^2).

Tolerance: relative error below 1% at eta = 1e-4 (measured 0.09%; 0.9% at 1e-3, 10% at 1e-2), and the error falls at least 50-fold when
eta falls 10-fold (second order).

Run: .venv/bin/python -m pytest tests/test_mechanism.py -q
"""

from __future__ import annotations

import pytest
import torch

from workbench.core.objectives import make_params, objective_terms
from workbench.core.regimes import REGIMES, logp_coef, regime_metrics

COUNTS = torch.tensor([[8, 6, 4, 2], [10, 5, 3, 2], [1, 2, 3, 14]], dtype=torch.float64)  # per state, out of 20
RATIO = torch.tensor([[1.5, 0.9, 1.05, 0.6], [0.7, 1.3, 1.0, 1.1], [1.25, 0.95, 0.75, 1.02]], dtype=torch.float64)
RAW = torch.tensor([[1.0, -0.5, 0.3, -2.0], [-1.0, 2.0, 0.5, -0.2], [0.4, 1.5, -1.0, 0.1]], dtype=torch.float64)
PARAMS = make_params("cispo", {"eps_low": 0.2, "eps_high": 0.2})


def entropy(z: torch.Tensor) -> torch.Tensor:
    """(S,) exact entropy of softmax(z) per state."""
    logp = torch.log_softmax(z, -1)
    return -(logp.exp() * logp).sum(-1)


def tabular_batch():
    """One response of N = 60 tokens: the (s, a) pairs with multiplicity COUNTS; its logp has z's graph."""
    z = (COUNTS / COUNTS.sum(-1, keepdim=True)).log().requires_grad_(True)
    pi = torch.softmax(z, -1).detach()
    weight = RATIO.clamp(0.8, 1.2)  # cispo's w, independent of the advantage
    adv = RAW - ((pi * weight * RAW).sum(-1, keepdim=True) / (pi * weight).sum(-1, keepdim=True))  # E_pi[w A | s] = 0
    s_idx, a_idx = [], []
    for s in range(COUNTS.shape[0]):
        for a in range(COUNTS.shape[1]):
            s_idx += [s] * int(COUNTS[s, a])
            a_idx += [a] * int(COUNTS[s, a])
    s_idx, a_idx = torch.tensor(s_idx), torch.tensor(a_idx)
    logp = torch.log_softmax(z, -1)[s_idx, a_idx][None]  # (1, N)
    old_logp = logp.detach() - RATIO[s_idx, a_idx].log()[None]
    return z, logp, old_logp, adv[s_idx, a_idx][None], adv


def predicted_and_exact(eta: float) -> tuple[float, float, dict[str, float]]:
    z, logp, old_logp, adv_tok, adv = tabular_batch()
    mask = torch.ones_like(logp)
    per_token, terms, adv_bt = objective_terms("cispo", logp, old_logp, adv_tok, mask, PARAMS)
    coef = logp_coef(per_token, logp)
    metrics = regime_metrics(terms.ratio, terms.weight, terms.clipped, adv_bt, mask, logp=logp.detach(), coef=coef)
    push = sum(metrics[f"regime/{g}/entropy_push"] for g in REGIMES)
    u = RATIO.clamp(0.8, 1.2) * adv  # what logp_coef must have found, per (s, a)
    z0 = z.detach()
    weights = COUNTS.sum(-1) / COUNTS.sum()  # share of the batch's tokens in each state
    exact = (weights * (entropy(z0 + eta * u) - entropy(z0))).sum().item()
    return eta * push, exact, metrics


def test_first_order_entropy_change_matches_the_exact_change():
    pred, exact, metrics = predicted_and_exact(1e-4)
    assert abs(exact) > 1e-6  # a step that moves the entropy measurably
    assert abs(pred - exact) < 1e-2 * abs(exact), (pred, exact)
    pred10, exact10, _ = predicted_and_exact(1e-3)
    assert abs(pred10 - exact10) > 50 * abs(pred - exact)  # the gap is second order in eta
    # Clipping acted, and clipped tokens carry part of the push (cispo keeps their gradient).
    assert any(abs(metrics[f"regime/{g}/entropy_push_clipped"]) > 1e-4 for g in REGIMES)
    assert all(metrics[f"regime/{g}/token_frac"] > 0 for g in REGIMES)


def test_coefficient_is_the_clipped_weight_times_the_advantage():
    z, logp, old_logp, adv_tok, adv = tabular_batch()
    per_token, _, _ = objective_terms("cispo", logp, old_logp, adv_tok, torch.ones_like(logp), PARAMS)
    coef = logp_coef(per_token, logp)
    want = (RATIO.clamp(0.8, 1.2) * adv)
    s_a = [(s, a) for s in range(3) for a in range(4) for _ in range(int(COUNTS[s, a]))]
    assert torch.allclose(coef[0], torch.stack([want[s, a] for s, a in s_a]), atol=1e-12)
    # PPO-clip stops the gradient where its clip branch wins: u = 0 there.
    per_token, terms, _ = objective_terms("grpo", logp, old_logp, adv_tok, torch.ones_like(logp), make_params("grpo", {}))
    coef = logp_coef(per_token, logp)
    assert terms.clipped.any() and bool((coef[terms.clipped] == 0).all())
    assert logp_coef(per_token.detach(), logp) is None


# --- the claims measure entropy_push:<regime> ---------------------------------------------------


def push_run(pushes: list[float]):
    import numpy as np

    from workbench.tracking import MetricSeries, RunRecord

    steps = np.arange(1, len(pushes) + 1)
    series = {"regime/neg_up/entropy_push": MetricSeries(steps, np.array(pushes, float), steps * 1.0)}
    return RunRecord("r", "r", "1", "FINISHED", 0, 1, {}, {}, tuple(series), series)


def test_entropy_push_measure_is_the_mean_over_steps_of_the_regime_push():
    import math

    from workbench.sweep.measures import run_measure
    from workbench.sweep.claims import ClaimSpec

    run = push_run([0.2, float("nan"), -0.1, 0.5])  # a step without regime tokens is left out
    assert run_measure(run, "entropy_push:neg_up", None) == pytest.approx(0.2)
    assert math.isnan(run_measure(run, "entropy_push:pos_down", None))  # not logged: no value, not 0
    spec = ClaimSpec(id="c", text="t", measure="entropy_push:neg_up", arms=["a", "b"], expect="higher")
    assert spec.measure == "entropy_push:neg_up"
    with pytest.raises(ValueError, match="entropy_push:<regime>"):
        ClaimSpec(id="c", text="t", measure="entropy_push:sideways", arms=["a", "b"], expect="higher")


# --- the report figure ---------------------------------------------------------------------------


def mechanism_run(name: str, steps: int, with_push: bool = True, arm: str | None = None, scale: float = 1.0):
    import numpy as np

    from workbench.tracking import MetricSeries, RunRecord

    s = np.arange(1, steps + 1)
    series = {"entropy/mean": MetricSeries(s, scale * (2.0 - 0.1 * s), s * 1.0)}
    if with_push:
        for i, g in enumerate(REGIMES):
            series[f"regime/{g}/entropy_push"] = MetricSeries(s, scale * (i + 1) * 0.1 * np.ones(steps), s * 1.0)
            series[f"regime/{g}/entropy_push_clipped"] = MetricSeries(s[1:], 0.03 * np.ones(steps - 1), s[1:] * 1.0)
    tags = {"dispo.arm": arm} if arm else {}
    return RunRecord(name, name, "1", "FINISHED", 0, 1, {}, tags, tuple(series), series)


def test_runs_of_an_arm_study_are_averaged_per_arm_over_their_seeds():
    from workbench.report.mechanism import mechanism_info

    runs = [mechanism_run("b0", 4, arm="base"), mechanism_run("l0", 4, arm="loose"),
            mechanism_run("b1", 5, arm="base", scale=3.0)]  # seed 1 of base ran a step more
    info = mechanism_info(runs)
    assert [r.label for r in info.runs] == ["base (mean of 2 seeds)", "loose (mean of 1 seeds)"]
    base = info.runs[0]
    assert list(base.steps) == [1, 2, 3, 4, 5]
    assert base.entropy[:4] == pytest.approx([2 * (2.0 - 0.1 * s) for s in range(1, 5)])  # mean of x1 and x3
    assert base.entropy[4] == pytest.approx(3 * 1.5)  # step 5: only seed 1
    pos_up = REGIMES.index("pos_up")
    assert base.kept["pos_up"][1:4] == pytest.approx([2 * (pos_up + 1) * 0.1 - 0.03] * 3)


def test_mechanism_info_splits_each_regime_push_into_kept_and_clipped():
    import math

    from workbench.report.mechanism import mechanism_info, mechanism_note, plot_mechanism

    info = mechanism_info([mechanism_run("a", 5), mechanism_run("old", 5, with_push=False)])
    assert [r.label for r in info.runs] == ["a"] and info.without == ("old",)
    run = info.runs[0]
    assert list(run.steps) == [1, 2, 3, 4, 5] and run.entropy[0] == pytest.approx(1.9)
    neg_up = REGIMES.index("neg_up")
    assert run.kept["neg_up"][1:] == pytest.approx([(neg_up + 1) * 0.1 - 0.03] * 4)  # whole regime minus clipped
    assert run.clipped["neg_up"][1:] == pytest.approx([0.03] * 4)
    assert math.isnan(run.clipped["neg_up"][0]) and math.isnan(run.kept["neg_up"][0])  # step 1: no clipped part logged
    assert "old" in mechanism_note(info)
    fig = plot_mechanism(info)
    assert len(fig.data) == len(REGIMES) * 2 + 1  # kept and clipped per regime, and the entropy
