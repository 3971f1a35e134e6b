"""The sequential paired test behind claim verdicts, on arrays of many studies at once.

A claim link compares two arms seed by seed: `diffs[s, j]` is (first arm - second arm) at the
j-th seed of the study's seed list for study `s` (NaN where a run is missing). The study
declares looks, numbers of seeds `n_1 < ... < n_K`; look k uses the first `n_k` seeds only.

Alpha is spent by a Bonferroni split: each look of each link gets `alpha / (K * L)` (two-sided),
L the claim's number of links. By the union bound the chance that any look of any link
crosses a boundary wrongly is at most alpha, whatever the dependence between looks and links,
and whatever the seeds' distribution for the exact 0/1 test (Lan & DeMets 1983, Biometrika
70:659, frame such splits as alpha spending; the Bonferroni split is its simplest, most
conservative member, which we take because the t and sign tests at 5-20 seeds are far from the
normal theory the O'Brien-Fleming and Pocock boundaries are computed under).

At each look a link gets one of four codes:
- reproduced / refuted: the look's test rejects "no difference" at its alpha, on the claimed
  / the other side. Continuous measures: paired t on the differences. 0/1 measures: exact
  two-sided sign test on the discordant pairs (exact McNemar).
- absent: not the above, and the look's (1 - alpha) interval lies strictly inside
  (-margin, +margin): two one-sided tests at alpha/2 each (Schuirmann 1987, J. Pharmacokinet.
  Biopharm. 15:657), so a false "absent" across the looks has chance <= alpha / 2 when the
  true effect is at least the margin. Continuous: the paired-t interval. 0/1: the exact
  interval [L10 - U01, U10 - L01], from Clopper-Pearson bounds at alpha/4 on the shares of
  pairs (1, 0) and (0, 1).
- undecided: anything else, or fewer than 2 pairs.
The first look that decides is the link's verdict; later looks do not change it.

All functions take `(S, N)` arrays so that the simulations in `benchmarks/claims_rule.py` and
`tests/test_claims_rule.py` run thousands of studies through the same code as the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
UNDECIDED, REPRODUCED, REFUTED, ABSENT = 0, 1, 2, 3
VERDICTS = ("undecided", "reproduced", "refuted", "absent")  # indexed by the codes above


def look_alpha(n_looks: int, n_links: int = 1, alpha: float = ALPHA) -> float:
    """Two-sided alpha of one look of one link: the Bonferroni split of `alpha`."""
    return alpha / (n_looks * n_links)


class LookStats(NamedTuple):
    """One link at every look: arrays of shape `(S, K)` (NaN where a look has < 2 pairs)."""

    n: np.ndarray  # pairs with a finite difference among the look's seeds
    effect: np.ndarray  # mean difference (0/1: share (1, 0) minus share (0, 1))
    low: np.ndarray  # the look's (1 - alpha) interval of the effect
    high: np.ndarray
    p: np.ndarray  # two-sided p-value of "no difference"
    sd: np.ndarray  # spread of the differences (continuous; NaN for 0/1)
    verdict: np.ndarray  # int codes at each look on its own (not yet frozen)


def look_stats(diffs: np.ndarray, looks: Sequence[int], alpha: float, binary: bool, margin: float | None,
               sign: float) -> LookStats:
    """Test every look of `diffs` `(S, N)` at two-sided `alpha`; `sign` +1 claims first > second, -1 less."""
    diffs = np.atleast_2d(np.asarray(diffs, dtype=float))
    cols = [(_binary_look if binary else _t_look)(diffs[:, :n], alpha) for n in looks]
    n, effect, low, high, p, sd = (np.stack([c[i] for c in cols], axis=1) for i in range(6))
    verdict = np.full(n.shape, UNDECIDED, dtype=np.int8)
    ok = n >= 2
    rejected = ok & (p <= alpha)
    verdict[rejected & (sign * effect > 0)] = REPRODUCED
    verdict[rejected & (sign * effect < 0)] = REFUTED
    if margin is not None:
        with np.errstate(invalid="ignore"):
            inside = ok & ~rejected & (low > -margin) & (high < margin)
        verdict[inside] = ABSENT
    return LookStats(n, effect, low, high, p, sd, verdict)


def _t_look(x: np.ndarray, alpha: float):
    n = np.isfinite(x).sum(axis=1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet():
        mean = np.nanmean(x, axis=1)
        sd = np.nanstd(x, axis=1, ddof=1)
        se = sd / np.sqrt(n)
        df = np.where(n >= 2, n - 1, np.nan)
        q = stats.t.ppf(1 - alpha / 2, df)
        p = np.where(se > 0, 2 * stats.t.sf(np.abs(mean) / se, df), np.where(mean != 0, 0.0, 1.0))
        half = np.where(se > 0, q * se, 0.0)  # equal differences: the interval is the point
    few = n < 2
    mean, sd, p, half = (np.where(few, np.nan, a) for a in (mean, sd, p, half))
    return n, mean, mean - half, mean + half, p, sd


def _binary_look(x: np.ndarray, alpha: float):
    n = np.isfinite(x).sum(axis=1)
    up = (x > 0).sum(axis=1)  # pairs (1, 0): NaN compares False
    down = (x < 0).sum(axis=1)
    discordant = up + down
    p = np.minimum(1.0, 2 * stats.binom.cdf(np.minimum(up, down), discordant, 0.5))
    with np.errstate(invalid="ignore", divide="ignore"):
        effect = (up - down) / n
    lo_up, hi_up = clopper_pearson(up, n, alpha / 4)
    lo_down, hi_down = clopper_pearson(down, n, alpha / 4)
    few = n < 2
    out = [np.where(few, np.nan, a) for a in (effect, lo_up - hi_down, hi_up - lo_down, p)]
    return (n.astype(float), *out, np.full(len(n), np.nan))


def clopper_pearson(k: np.ndarray, n: np.ndarray, tail: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact bounds on a binomial share: P(share < low) <= tail and P(share > high) <= tail."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet():
        low = np.where(k > 0, stats.beta.ppf(tail, k, n - k + 1), 0.0)
        high = np.where(k < n, stats.beta.ppf(1 - tail, k + 1, n - k), 1.0)
    return low, high


class LinkDecision(NamedTuple):
    stats: LookStats
    verdict: np.ndarray  # (S,) code of the first deciding look, UNDECIDED if none
    look: np.ndarray  # (S,) index of that look, -1 if none


def decide_link(diffs: np.ndarray, looks: Sequence[int], alpha: float, binary: bool, margin: float | None,
                sign: float) -> LinkDecision:
    """Run the looks in order; the first that decides gives the verdict."""
    st = look_stats(diffs, looks, alpha, binary, margin, sign)
    decided = st.verdict != UNDECIDED
    look = np.where(decided.any(axis=1), decided.argmax(axis=1), -1)
    verdict = np.where(look >= 0, st.verdict[np.arange(len(look)), np.maximum(look, 0)], UNDECIDED)
    return LinkDecision(st, verdict.astype(np.int8), look)


def combine(link_verdicts: np.ndarray) -> np.ndarray:
    """Claim verdicts from link verdicts `(L, S)`: refuted if any link is; else absent if any link is
    (the claimed order does not hold throughout); else reproduced if all are; else undecided."""
    v = np.atleast_2d(link_verdicts)
    out = np.full(v.shape[1], UNDECIDED, dtype=np.int8)
    out[(v == REPRODUCED).all(axis=0)] = REPRODUCED
    out[(v == ABSENT).any(axis=0)] = ABSENT
    out[(v == REFUTED).any(axis=0)] = REFUTED
    return out


class ClaimDecision(NamedTuple):
    links: list[LinkDecision]
    verdict: np.ndarray  # (S,) codes
    look: np.ndarray  # (S,) index of the first look whose frozen link verdicts decide the claim, -1 if none


def decide_claim(link_diffs: Sequence[np.ndarray], looks: Sequence[int], binary: bool, margin: float | None,
                 sign: float, alpha: float = ALPHA, n_looks: int | None = None) -> ClaimDecision:
    """A claim's verdict from its links' differences `(S, N)` each, at the `looks` reached so far.

    `n_looks` is the number of looks the study declared (default: all of `looks`): alpha is split
    over the declared looks, even when a study stopped before its last one.
    """
    alpha_look = look_alpha(n_looks or len(looks), len(link_diffs), alpha)
    links = [decide_link(d, looks, alpha_look, binary, margin, sign) for d in link_diffs]
    s = len(links[0].verdict)
    verdict = np.full(s, UNDECIDED, dtype=np.int8)
    look = np.full(s, -1)
    for k in range(len(looks)):
        frozen = np.stack([np.where((ld.look >= 0) & (ld.look <= k), ld.verdict, UNDECIDED) for ld in links])
        now = combine(frozen)
        new = (look < 0) & (now != UNDECIDED)
        verdict[new], look[new] = now[new], k
    return ClaimDecision(links, verdict, look)


def detectable_effect(sd: np.ndarray | float, n: np.ndarray | float, alpha: float, binary: bool,
                      power: float = POWER) -> np.ndarray:
    """Smallest |effect| the look's test detects with chance `power` at `n` pairs.

    Continuous: (t_{1-alpha/2} + t_{power}) * sd / sqrt(n), on n - 1 degrees of freedom, from
    the observed spread `sd` of the paired differences. 0/1: exact, in the most favourable case
    (every discordant pair goes the claimed way, so pairs (1, 0) ~ Binomial(n, effect)): the
    effect at which P(at least c such pairs) = power, c the fewest the sign test needs; inf when
    even n of n would not reach alpha.
    """
    n = np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet():
        if binary:
            need = np.ceil(np.log2(2 / alpha))  # 2 * 0.5^c <= alpha
            out = np.where(need <= n, stats.beta.ppf(power, need, n - need + 1), np.inf)
        else:
            df = np.where(n >= 2, n - 1, np.nan)
            out = (stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * np.asarray(sd, float) / np.sqrt(n)
    return np.asarray(out, float)


class _quiet:
    """numpy's nan-reductions warn on all-NaN rows, which mean 'no pairs yet' here."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)
