"""The claims verdict rule, checked by simulation through the code the report runs.

Thousands of simulated studies go through `workbench.sweep.sequential.decide_claim` (what
`workbench.sweep.claims.judge` calls) at looks of 5, 10, 15 and 20 paired seeds. The chance of a
false "reproduced" or "refuted" must stay <= 0.05 across all looks, plus a Monte Carlo allowance of
3 standard errors of a 0.05 rate (0.0103 at 4,000 studies); the power at a stated effect is
asserted as a floor a little under the measured figure (`benchmarks/claims_rule.py` prints them all).
The replaced rule (95% percentile bootstrap over a fixed 5 seeds) is kept here only to show its
false-decision rate above 0.05.

Run: .venv/bin/python -m pytest tests/test_claims_rule.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from workbench.sweep import sequential as sq
from workbench.sweep.claims import ClaimSpec, judge

LOOKS = [5, 10, 15, 20]
STUDIES = 4000
ALLOWANCE = 3 * math.sqrt(0.05 * 0.95 / STUDIES)


def normal(rng, d, sd=1.0):
    return rng.normal(d, sd, (STUDIES, LOOKS[-1]))


def t3(rng, d, sd=1.0):
    return d + sd * rng.standard_t(3, (STUDIES, LOOKS[-1]))


def zero_one(rng, d, p=0.3):
    """Each arm is 1 (collapsed) with its own chance, independently per seed: differences in {-1, 0, 1}."""
    shape = (STUDIES, LOOKS[-1])
    return (rng.random(shape) < p + d / 2).astype(float) - (rng.random(shape) < p - d / 2)


def false_decisions(verdict) -> float:
    return float(np.mean((verdict == sq.REPRODUCED) | (verdict == sq.REFUTED)))


@pytest.mark.parametrize("draw, binary, margin, effect, power", [
    (normal, False, 0.25, 0.75, 0.72),  # measured 0.76 reproduced at an effect of 0.75 sd
    (t3, False, 0.25, 1.0, 0.63),  # measured 0.68: t3 differences (sd 1.73)
    (zero_one, True, 0.3, 0.6, 0.95),  # measured 0.97: 60% of seeds collapse in one arm, none in the other
])
def test_false_decisions_at_most_alpha_across_looks_and_power_at_an_effect(draw, binary, margin, effect, power):
    rng = np.random.default_rng(7)
    null = sq.decide_claim([draw(rng, 0.0)], LOOKS, binary, margin, +1.0)
    assert false_decisions(null.verdict) <= 0.05 + ALLOWANCE
    assert set(np.unique(null.look)) <= {-1, 0, 1, 2, 3}  # every look can decide, none after the last
    real = sq.decide_claim([draw(rng, effect)], LOOKS, binary, margin, +1.0)
    assert np.mean(real.verdict == sq.REPRODUCED) >= power
    assert np.mean(real.verdict == sq.REFUTED) <= 0.05 + ALLOWANCE  # the wrong side, with a real effect
    # the claimed direction flipped: the same data refute it
    flipped = sq.decide_claim([draw(np.random.default_rng(8), effect)], LOOKS, binary, margin, -1.0)
    assert np.mean(flipped.verdict == sq.REFUTED) >= power


def test_every_look_at_full_alpha_would_not_hold_the_rate():
    # Why alpha is split: testing each of the 4 looks at 0.05 decides far more than 5% of null studies.
    rng = np.random.default_rng(3)
    naive = sq.decide_link(normal(rng, 0.0), LOOKS, 0.05, False, None, +1.0)
    assert false_decisions(naive.verdict) > 0.08


def test_three_arm_chains_keep_the_rate_and_are_reproduced_only_when_both_links_hold():
    rng = np.random.default_rng(11)
    shared = rng.normal(0, 2.0, (STUDIES, LOOKS[-1]))  # seed effect shared by the arms: cancels in pairs

    def arms(top, mid):
        a, b, c = (shared + m + rng.normal(0, 1 / math.sqrt(2), shared.shape) for m in (top, mid, 0.0))
        return [a - b, b - c]

    null = sq.decide_claim(arms(0.0, 0.0), LOOKS, False, 0.25, +1.0)
    assert false_decisions(null.verdict) <= 0.05 + ALLOWANCE
    half = sq.decide_claim(arms(1.0, 0.0), LOOKS, False, 0.25, +1.0)  # a > b, but b = c: the chain is false
    assert np.mean(half.verdict == sq.REPRODUCED) <= 0.05 + ALLOWANCE
    both = sq.decide_claim(arms(1.5, 0.75), LOOKS, False, 0.25, +1.0)
    assert np.mean(both.verdict == sq.REPRODUCED) >= 0.33  # measured 0.385: each link at alpha 0.05 / 8


@pytest.mark.parametrize("draw, binary, margin, sd, absent_floor", [
    (normal, False, 0.25, 0.15, 0.95),  # measured 0.977
    (t3, False, 0.25, 0.1, 0.95),  # measured 0.974
    (zero_one, True, 0.3, 0.0, 0.99),  # neither arm ever collapses: absent at 20 seeds, not before
])
def test_absent_for_a_true_zero_with_tight_spread_and_not_for_twice_the_margin(draw, binary, margin, sd, absent_floor):
    rng = np.random.default_rng(5)
    zero = sq.decide_claim([draw(rng, 0.0, sd)], LOOKS, binary, margin, +1.0)
    assert np.mean(zero.verdict == sq.ABSENT) >= absent_floor
    for effect in (2 * margin, margin):  # 2x the margin, and the worst case: exactly the margin
        wide = 0.3 if binary else sd
        big = sq.decide_claim([draw(rng, effect, wide)], LOOKS, binary, margin, +1.0)
        assert np.mean(big.verdict == sq.ABSENT) <= 0.05


def test_a_wide_spread_is_never_absent_but_states_what_it_could_detect():
    rng = np.random.default_rng(9)
    d = sq.decide_claim([normal(rng, 0.0, 1.0)], LOOKS, False, 0.25, +1.0)
    assert not (d.verdict == sq.ABSENT).any()
    # detectable effect at 80% power: the formula's power, checked by simulation at 20 seeds
    alpha = sq.look_alpha(len(LOOKS))
    mde = float(sq.detectable_effect(1.0, 20, alpha, False))
    hits = sq.look_stats(normal(rng, mde, 1.0), [20], alpha, False, None, +1.0).verdict[:, 0] == sq.REPRODUCED
    assert 0.75 <= hits.mean() <= 0.85
    mde01 = float(sq.detectable_effect(0.0, 20, alpha, True))  # 0/1, every discordant pair one way
    one_way = (rng.random((STUDIES, 20)) < mde01).astype(float)
    hits = sq.look_stats(one_way, [20], alpha, True, None, +1.0).verdict[:, 0] == sq.REPRODUCED
    assert 0.77 <= hits.mean() <= 0.83


def test_the_report_path_gives_the_same_verdicts_as_the_array_path():
    rng = np.random.default_rng(2)
    diffs = normal(rng, 0.4)[:40]
    arrays = sq.decide_claim([diffs], LOOKS, False, 0.02, +1.0)
    claim = ClaimSpec(id="c", text="t", measure="final_accuracy", arms=["a", "b"], expect="higher")
    for i in range(len(diffs)):
        res = judge(claim, {"a": dict(enumerate(diffs[i])), "b": dict.fromkeys(range(20), 0.0)}, list(range(20)), LOOKS)
        assert res.verdict == sq.VERDICTS[arrays.verdict[i]]
        assert (res.look or 0) - 1 == arrays.look[i]


# ---- the replaced rule, kept only to show why it went ----

def old_bootstrap_rule(diffs: np.ndarray, resamples: int = 9999) -> np.ndarray:
    """95% percentile bootstrap of the mean difference over a fixed 5 seeds: reproduced when the interval
    lies wholly above 0, refuted wholly below; a constant sample gives [c, c]."""
    rng = np.random.default_rng(0)
    n = diffs.shape[1]
    counts = rng.multinomial(n, np.full(n, 1 / n), resamples).T / n  # one set of resamples for all studies
    out = np.zeros(len(diffs), dtype=np.int8)
    for i in range(0, len(diffs), 500):
        x = diffs[i:i + 500]
        low, high = np.percentile(x @ counts, [2.5, 97.5], axis=1)
        const = np.ptp(x, axis=1) == 0
        low, high = np.where(const, x[:, 0], low), np.where(const, x[:, 0], high)
        out[i:i + 500][low > 0] = sq.REPRODUCED
        out[i:i + 500][high < 0] = sq.REFUTED
    return out


def test_the_old_fixed_five_seed_bootstrap_decides_too_often_without_an_effect():
    rng = np.random.default_rng(1)
    old = false_decisions(old_bootstrap_rule(normal(rng, 0.0)[:2000, :5]))
    assert old > 0.05 + 3 * math.sqrt(0.05 * 0.95 / 2000)  # measured 0.148 at 4,000 studies
    new = false_decisions(sq.decide_claim([normal(rng, 0.0)[:2000, :5]], [5], False, 0.25, +1.0).verdict)
    assert new <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 2000)
    # and for 0/1: all five seeds collapsed in one arm, none in the other, is "reproduced" by the old rule only
    assert old_bootstrap_rule(np.ones((1, 5)))[0] == sq.REPRODUCED
    assert sq.decide_claim([np.ones((1, 5))], [5], True, 0.3, +1.0).verdict[0] == sq.UNDECIDED
