"""Claims a study is declared to test, and the verdict on each from paired seeds.

A claims study (e.g. `studies/claims.yaml`) states, before it runs, what each claim measures
and which arms it compares:

    claims:
      - id: exploration
        text: "correct responses, weights > 1 looser: token entropy rises"
        measure: entropy_late          # see MEASURES
        arms: [pos_up_loose, base]     # claimed order, best first
        expect: higher

Every arm trains once per study seed, and arms that share a seed share its warm start and
rollout random stream, so each seed gives one paired difference per link of the chain
(`arms[i]` vs `arms[i + 1]`). The verdict rule (`RULE`) is fixed here, not in the study file,
so that the same stored runs always give the same verdict.

Pure functions over numbers: no MLflow, no torch. `workbench.report.claims` reads the
measures off stored runs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from workbench.names import REGIMES, TAG_CLAIMS

MIN_SEEDS = 5
CONFIDENCE = 0.95
N_RESAMPLES = 9999
MEASURES = {
    "entropy_late": "mean token entropy (entropy/mean) over the last third of the training steps",
    "final_accuracy": "held-out accuracy (avg@k) at the last evaluation",
    "collapse:<kind>": "1 if the run was flagged collapse=<kind>, else 0 (share of seeds that collapsed)",
    "entropy_push:<regime>": "mean over the run's steps of regime/<regime>/entropy_push (first-order entropy change "
                             "its tokens pushed; > 0: up)",
}
RULE = (f"Per link of a claim, the paired effect is the mean over seeds of (first arm - second arm), with a "
        f"{CONFIDENCE:.0%} percentile bootstrap interval ({N_RESAMPLES} resamples of the seeds). A link is "
        f"reproduced when the whole interval lies on the claimed side of 0, refuted when it lies wholly on the "
        f"other side, and inconclusive otherwise or with fewer than {MIN_SEEDS} paired seeds. A claim is reproduced "
        f"when every link is, refuted when any link is, and inconclusive otherwise.")

Verdict = Literal["reproduced", "refuted", "inconclusive"]


class ClaimSpec(BaseModel):
    """One claim as written in a study file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9_]+$", description="short name, used as the table's row key")
    text: str = Field(min_length=1, description="the claim in words, as the paper makes it")
    measure: str = Field(description="entropy_late | final_accuracy | collapse:<kind> | entropy_push:<regime>")
    arms: list[str] = Field(min_length=2, description="arms in the claimed order, best (or highest) first")
    expect: Literal["higher", "lower"] = Field(description="higher: arms[0] > arms[1] > ...; lower: the reverse")

    @field_validator("measure")
    @classmethod
    def _known_measure(cls, v: str) -> str:
        if v in ("entropy_late", "final_accuracy") or re.fullmatch(r"collapse:[a-z_]+", v):
            return v
        if v.startswith("entropy_push:") and v.removeprefix("entropy_push:") in REGIMES:
            return v
        raise ValueError(f"unknown measure {v!r}; allowed: {', '.join(MEASURES)}")

    @field_validator("arms")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each arm at most once, got {v}")
        return v


class Link(NamedTuple):
    """One paired comparison `first` vs `second`."""

    first: str
    second: str
    n: int  # paired seeds with a finite measure in both arms
    effect: float  # mean of (first - second); NaN without pairs
    low: float  # bootstrap interval
    high: float
    agree: int  # seeds whose difference has the claimed sign (ties do not agree)
    verdict: Verdict


class ClaimResult(NamedTuple):
    claim: ClaimSpec
    links: list[Link]
    verdict: Verdict


def paired_link(first: str, second: str, a: Mapping[int, float], b: Mapping[int, float],
                expect: str, min_seeds: int = MIN_SEEDS) -> Link:
    """Compare two arms' per-seed measures (seed -> value), paired on the seeds both have."""
    import numpy as np  # here, not at import: study files are validated before numpy is needed

    seeds = sorted(s for s in set(a) & set(b) if math.isfinite(a[s]) and math.isfinite(b[s]))
    diffs = np.array([a[s] - b[s] for s in seeds], dtype=float)
    sign = 1.0 if expect == "higher" else -1.0
    if len(diffs) == 0:
        return Link(first, second, 0, math.nan, math.nan, math.nan, 0, "inconclusive")
    low, high = bootstrap_interval(diffs)
    agree = int((sign * diffs > 0).sum())
    if len(diffs) < min_seeds:
        verdict: Verdict = "inconclusive"
    elif sign * low > 0 and sign * high > 0:
        verdict = "reproduced"
    elif sign * low < 0 and sign * high < 0:
        verdict = "refuted"
    else:
        verdict = "inconclusive"
    return Link(first, second, len(diffs), float(diffs.mean()), low, high, agree, verdict)


def bootstrap_interval(diffs, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `diffs` (an array); a constant sample gives [c, c]."""
    import numpy as np
    from scipy import stats

    if len(diffs) == 1 or np.ptp(diffs) == 0:
        return float(diffs[0]), float(diffs[0])
    res = stats.bootstrap((diffs,), np.mean, confidence_level=CONFIDENCE, n_resamples=N_RESAMPLES,
                          method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def judge(claim: ClaimSpec, measures: Mapping[str, Mapping[int, float]], min_seeds: int = MIN_SEEDS) -> ClaimResult:
    """The claim's verdict from per-arm, per-seed measures (`measures[arm][seed]`)."""
    links = [paired_link(a, b, measures.get(a, {}), measures.get(b, {}), claim.expect, min_seeds)
             for a, b in zip(claim.arms, claim.arms[1:])]
    verdicts = {link.verdict for link in links}
    if verdicts == {"reproduced"}:
        verdict: Verdict = "reproduced"
    elif "refuted" in verdicts:
        verdict = "refuted"
    else:
        verdict = "inconclusive"
    return ClaimResult(claim, links, verdict)


def check_claims(claims: Sequence[ClaimSpec], arms: Sequence[str] | None, n_seeds: int,
                 prunes: bool = False) -> list[str]:
    """Problems with a study's claims, one line each: unknown arms, duplicate ids, too few seeds, pruning."""
    errors = []
    if claims and prunes:
        errors.append("directions: a claims study must run every arm on every seed; a collapsed or pruned trial "
                      "would lose its seeds: add 'minimize collapse' to directions and set pruner: none")
    ids = [c.id for c in claims]
    for i, c in enumerate(claims):
        if ids.count(c.id) > 1 and ids.index(c.id) != i:
            errors.append(f"claims.{i}.id: {c.id!r} appears twice")
        if arms is None:
            errors.append(f"claims.{i}.arms: claims compare arms; the study's space needs an `arm` dimension")
            continue
        unknown = [a for a in c.arms if a not in arms]
        if unknown:
            errors.append(f"claims.{i}.arms: unknown arm(s) {', '.join(unknown)}; the study's arms: {', '.join(arms)}")
    if claims and n_seeds < MIN_SEEDS:
        errors.append(f"seeds: a claims study needs at least {MIN_SEEDS} seeds (paired by seed), got {n_seeds}")
    return errors


def claims_tag(claims: Sequence[ClaimSpec]) -> dict[str, str]:
    """The parent-run tag that stores `claims` (empty for none)."""
    return {TAG_CLAIMS: json.dumps([c.model_dump() for c in claims])} if claims else {}


def declared_claims(tags: Mapping[str, str]) -> list[ClaimSpec]:
    """The claims a study's parent run declared; [] for a study without claims."""
    raw = tags.get(TAG_CLAIMS)
    return [ClaimSpec.model_validate(c) for c in json.loads(raw)] if raw else []
