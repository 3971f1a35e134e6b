"""The claims section of a study report: per-seed measures read off stored runs, then verdicts.

Everything comes from the MLflow runs of the study: the claims the study declared (the
parent run's `dispo.claims` tag, written when the sweep started), each seed run's arm
(`dispo.arm`) and seed (`dispo.seed`), its collapse tag and its metric series. Anyone with the
store can recompute the table.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from statistics import fmean, median
from typing import NamedTuple

import numpy as np
import pandas as pd

from workbench.errors import UserError
from workbench.sweep.claims import RULE, ClaimResult, ClaimSpec, declared_claims, declared_looks, judge
from workbench.names import RATIO_ABS_DEV, REGIMES, TAG_ARM, TAG_COLLAPSE, TAG_SEEDS, regime_key
from workbench.report.runs import accuracy_key, curve
from workbench.sweep.measures import measures_by_arm
from workbench.tracking import RunRecord

class ArmRow(NamedTuple):
    """How much the bounds bound in one arm: medians over steps, then means over seeds."""

    arm: str
    seeds: int
    abs_dev: float  # ratio/abs_dev_mean
    clip_frac: dict[str, float]  # regime -> regime/<r>/clip_frac
    collapsed: int  # seeds flagged with any collapse kind


class ClaimsInfo(NamedTuple):
    results: list[ClaimResult]
    arms: list[ArmRow]
    accuracy_key: str | None


def _median_metric(run: RunRecord, key: str) -> float:
    c = curve(run, key)
    ok = c.values[~np.isnan(c.values)] if c is not None else np.array([])
    return float(median(ok)) if len(ok) else math.nan


def _nanmean(xs: list[float]) -> float:
    ok = [x for x in xs if not math.isnan(x)]
    return fmean(ok) if ok else math.nan


def arm_rows(runs: Sequence[RunRecord]) -> list[ArmRow]:
    by_arm: dict[str, list[RunRecord]] = {}
    for run in runs:
        if run.tags.get(TAG_ARM) is not None:
            by_arm.setdefault(run.tags[TAG_ARM], []).append(run)
    return [ArmRow(arm, len(rs), _nanmean([_median_metric(r, RATIO_ABS_DEV) for r in rs]),
                   {g: _nanmean([_median_metric(r, regime_key(g, "clip_frac")) for r in rs]) for g in REGIMES},
                   sum(r.tags.get(TAG_COLLAPSE) not in (None, "none") for r in rs))
            for arm, rs in by_arm.items()]


def get_claims_info(runs: Sequence[RunRecord], claims: Sequence[ClaimSpec], seeds: Sequence[int] | None = None,
                    looks: Sequence[int] | None = None) -> ClaimsInfo:
    """Verdicts on `claims` from `runs`; `seeds` in the study's order and `looks` as in `judge`."""
    acc = accuracy_key(runs)
    results = [judge(c, measures_by_arm(runs, c.measure, acc), seeds, looks) for c in claims]
    return ClaimsInfo(results, arm_rows(runs), acc)


def study_claims_info(runs: Sequence[RunRecord], parent_tags: Mapping[str, str],
                      looks: Sequence[int] | None = None) -> ClaimsInfo | None:
    """Verdicts on what a study's parent run declared (claims, seeds, looks); None without claims.

    `looks` judges at other looks than the declared ones, e.g. [5, 10, 15, 20] over a study that
    ran a plain list of 20 seeds: look k still uses the first n_k seeds of the study's list only.
    """
    claims = declared_claims(parent_tags)
    if not claims:
        return None
    raw = parent_tags.get(TAG_SEEDS)
    seeds = [int(s) for s in raw.split(",")] if raw else None
    if looks and seeds is not None and looks[-1] > len(seeds):
        raise UserError(f"looks: the study declared {len(seeds)} seeds, so no look can use more; got {list(looks)}")
    return get_claims_info(runs, claims, seeds, looks or declared_looks(parent_tags))


COLUMNS = ["claim", "text", "measure", "comparison", "verdict", "look", "looks", "link_verdict", "link_look",
           "paired_seeds", "effect", "ci_low", "ci_high", "p", "alpha", "seeds_agree", "margin", "detectable",
           "detectable_at_max_seeds"]


def claims_frame(info: ClaimsInfo) -> pd.DataFrame:
    """One row per claim link (a claim of k arms has k - 1 links): the link at the look that decided it
    (else the last look reached), the claim's verdict and deciding look. Looks are 1-based; empty while undecided."""
    rows = []
    for res in info.results:
        for link in res.links:
            rows.append({"claim": res.claim.id, "text": res.claim.text, "measure": res.claim.measure,
                         "comparison": _comparison(res, link.first, link.second), "verdict": res.verdict,
                         "look": res.look, "looks": "/".join(map(str, res.looks)), "link_verdict": link.verdict,
                         "link_look": link.look, "paired_seeds": link.n, "effect": link.effect, "ci_low": link.low,
                         "ci_high": link.high, "p": link.p, "alpha": link.alpha, "seeds_agree": link.agree,
                         "margin": res.margin, "detectable": link.detectable,
                         "detectable_at_max_seeds": link.detectable_at_max})
    return pd.DataFrame(rows, columns=COLUMNS).astype({"look": "Int64", "link_look": "Int64"})


def _comparison(res: ClaimResult, first: str, second: str) -> str:
    return f"{first} {'>' if res.claim.expect == 'higher' else '<'} {second}"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:+.3f}"


def _look(look: int | None, res: ClaimResult) -> str:
    if look is None:
        return f"after look {res.reached} of {len(res.looks)}" if res.reached else "no look reached yet"
    return f"at look {look} of {len(res.looks)} ({res.looks[look - 1]} seeds)"


def link_note(res: ClaimResult, link) -> str:
    """Margin for a decided link; the detectable effects for an undecided one."""
    if link.verdict != "undecided":
        return f"margin {res.margin:g}" if res.margin is not None else "no margin"
    if math.isnan(link.detectable):
        return "too few pairs to say what is detectable"
    margin = f"margin {res.margin:g}; " if res.margin is not None else "no margin; "
    return (f"{margin}detectable at 80% power: {detectable_text(link.detectable)} at {link.n} seeds, "
            f"{detectable_text(link.detectable_at_max)} at {res.looks[-1]}")


def detectable_text(effect: float) -> str:
    """An effect size, or 'none' where the test cannot reach its alpha at that many seeds (0/1, few pairs)."""
    return "none" if math.isinf(effect) else f"{abs(effect):.3g}"


def claims_html(info: ClaimsInfo) -> str:
    """The claims table, the rule that gave the verdicts and the arms' binding, as an HTML fragment."""
    out = ["<table class='summary'><tr><th>claim</th><th>verdict</th><th>comparison</th><th>measure</th>"
           "<th>effect [interval]</th><th>p (alpha)</th><th>seeds agree</th><th>link</th><th>margin or detectable effect</th></tr>"]
    for res in info.results:
        for i, link in enumerate(res.links):
            head = (f"<td rowspan={len(res.links)}><b>{html.escape(res.claim.id)}</b><br>{html.escape(res.claim.text)}</td>"
                    f"<td rowspan={len(res.links)}><b>{res.verdict}</b><br>{_look(res.look, res)}</td>" if i == 0 else "")
            p = "n/a" if math.isnan(link.p) else f"{link.p:.3g} ({link.alpha:.3g})"
            out.append(f"<tr>{head}<td>{html.escape(_comparison(res, link.first, link.second))}</td>"
                       f"<td>{html.escape(res.claim.measure)}</td>"
                       f"<td>{_fmt(link.effect)} [{_fmt(link.low)}, {_fmt(link.high)}]</td><td>{p}</td>"
                       f"<td>{link.agree}/{link.n}</td><td>{link.verdict} {_look(link.look, res)}</td>"
                       f"<td>{html.escape(link_note(res, link))}</td></tr>")
    out.append("</table>")
    out.append(f"<p class='note'>{html.escape(RULE)} Accuracy is {html.escape(info.accuracy_key or 'not logged')}.</p>")
    out.append("<table class='summary'><tr><th>arm</th><th>seeds</th><th>median |r - 1|</th>"
               + "".join(f"<th>clip_frac {g}</th>" for g in REGIMES) + "<th>collapsed</th></tr>")
    for row in info.arms:
        cells = "".join(f"<td>{'n/a' if math.isnan(row.clip_frac[g]) else f'{row.clip_frac[g]:.3f}'}</td>" for g in REGIMES)
        dev = "n/a" if math.isnan(row.abs_dev) else f"{row.abs_dev:.3f}"
        out.append(f"<tr><td>{html.escape(row.arm)}</td><td>{row.seeds}</td><td>{dev}</td>{cells}"
                   f"<td>{row.collapsed}/{row.seeds}</td></tr>")
    out.append("</table>")
    return "\n".join(out)
