"""Claims a study is declared to test, and the verdict on each from paired seeds.

A claims study (e.g. `studies/claims.yaml`) states, before it runs, what each claim measures,
which arms it compares and, optionally, the effect too small to matter:

    seeds: {looks: [5, 10, 15, 20]}    # seeds 0..4 at the first look, 0..9 at the second, ...
    claims:
      - id: exploration
        text: "correct responses, weights > 1 looser: token entropy rises"
        measure: entropy_late          # see MEASURES
        arms: [pos_up_loose, base]     # claimed order, best first
        expect: higher
        margin: 0.02                   # optional; default DEFAULT_MARGINS[family]

Every arm trains once per study seed, and arms that share a seed share its warm start and
rollout random stream, so each seed gives one paired difference per link of the chain
(`arms[i]` vs `arms[i + 1]`). The verdict rule (`RULE`, computed in `workbench.sweep.sequential`)
is fixed here, not in the study file, so that the same stored runs always give the same verdict.

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

MIN_SEEDS = 5  # at the last look: below it no 0/1 claim can be decided at all
MEASURES = {
    "entropy_late": "mean token entropy (entropy/mean) over the last third of the training steps",
    "final_accuracy": "held-out accuracy (avg@k) at the last evaluation",
    "collapse:<kind>": "1 if the run was flagged collapse=<kind>, else 0 (share of seeds that collapsed)",
    "entropy_push:<regime>": "mean over the run's steps of regime/<regime>/entropy_push (first-order entropy change "
                             "its tokens pushed; > 0: up)",
}
BINARY_MEASURES = {"collapse:<kind>"}  # 0/1 per run: exact tests; every other family is continuous
# Effects inside +-margin do not matter (units of the measure). A share of 0.3 of the runs for 0/1
# measures: with 20 seeds over 4 looks the exact interval is +-0.25 at best (no discordant pair), so
# a smaller default could never give "absent". 0.02 nats of entropy and 0.02 accuracy are about the
# seed-to-seed spread of the micro testbed's paired differences (README, benchmarks/variance.py).
DEFAULT_MARGINS = {"entropy_late": 0.02, "final_accuracy": 0.02, "collapse:<kind>": 0.3}
ALPHA = 0.05
RULE = (f"Per look k of K declared looks (look k uses the first n_k seeds only) and per link of a claim's "
        f"chain (L links), the paired differences (first arm - second arm) are tested at two-sided "
        f"alpha {ALPHA}/(K*L), a Bonferroni split of the alpha spent across looks and links (Lan & DeMets 1983, "
        f"Biometrika 70:659): a paired t-test for continuous measures, an exact sign test on the discordant pairs "
        f"(exact McNemar) for 0/1 measures. A link is reproduced when the test rejects on the claimed side, "
        f"refuted when it rejects on the other side, absent when it does not reject and the look's "
        f"(1 - alpha/(K*L)) interval (paired t; for 0/1 the exact interval from Clopper-Pearson bounds) lies "
        f"strictly inside +-margin (two one-sided tests, Schuirmann 1987), and undecided otherwise; the first "
        f"look that decides a link fixes its verdict. A claim is refuted when any link is, else absent when any "
        f"link is, else reproduced when all are, else undecided; its deciding look is the first at which the "
        f"links' verdicts so far decide it. The chance of a false reproduced or refuted verdict is at most "
        f"{ALPHA} per claim across all looks. An undecided link states the smallest effect its test would detect "
        f"with 80% power at the seeds used and at the study's last look.")

Verdict = Literal["reproduced", "refuted", "absent", "undecided"]


def measure_family(measure: str) -> str | None:
    """The MEASURES key `measure` belongs to (`collapse:repetition` -> `collapse:<kind>`), None if none."""
    for family in MEASURES:
        pattern = "[a-z0-9_]+".join(map(re.escape, re.split(r"<[a-z_]+>", family)))  # <kind>: any name
        if re.fullmatch(pattern, measure):
            return family
    return None


def is_binary(measure: str) -> bool:
    return measure_family(measure) in BINARY_MEASURES


class ClaimSpec(BaseModel):
    """One claim as written in a study file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9_]+$", description="short name, used as the table's row key")
    text: str = Field(min_length=1, description="the claim in words, as the paper makes it")
    measure: str = Field(description="one of MEASURES, e.g. entropy_late | final_accuracy | collapse:<kind> | entropy_push:<regime>")
    arms: list[str] = Field(min_length=2, description="arms in the claimed order, best (or highest) first")
    expect: Literal["higher", "lower"] = Field(description="higher: arms[0] > arms[1] > ...; lower: the reverse")
    margin: float | None = Field(None, gt=0, description="effects inside +-margin do not matter (the measure's units)")

    @field_validator("measure")
    @classmethod
    def _known_measure(cls, v: str) -> str:
        if measure_family(v) is None or (v.startswith("entropy_push:") and v.partition(":")[2] not in REGIMES):
            raise ValueError(f"unknown measure {v!r}; allowed: {', '.join(MEASURES)} (<regime>: {', '.join(REGIMES)})")
        return v

    @field_validator("arms")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each arm at most once, got {v}")
        return v

    @property
    def equivalence_margin(self) -> float | None:
        """The declared margin, else the measure family's default; None: "absent" cannot be reached."""
        return self.margin if self.margin is not None else DEFAULT_MARGINS.get(measure_family(self.measure) or "")


class Link(NamedTuple):
    """One paired comparison `first` vs `second`, at the look that decided it (else the last look reached)."""

    first: str
    second: str
    n: int  # paired seeds with a finite measure in both arms, among that look's seeds
    effect: float  # mean of (first - second); NaN without pairs
    low: float  # the look's (1 - alpha) interval
    high: float
    p: float  # two-sided p-value of "no difference"
    alpha: float  # the look's alpha (Bonferroni split over looks and links)
    agree: int  # seeds whose difference has the claimed sign (ties do not agree)
    verdict: Verdict
    look: int | None  # 1-based look that decided the link; None while undecided
    detectable: float  # smallest effect detectable at 80% power at n pairs (NaN once decided)
    detectable_at_max: float  # ... at the study's last look


class ClaimResult(NamedTuple):
    claim: ClaimSpec
    links: list[Link]
    verdict: Verdict
    look: int | None  # 1-based look that decided the claim; None while undecided
    looks: tuple[int, ...]  # seeds at each declared look
    reached: int  # looks whose seeds have been run
    margin: float | None


LOOKS_HELP = "increasing numbers of seeds, each at least 2, e.g. [5, 10, 20]"


def looks_problem(looks: object) -> str | None:
    """Why `looks` cannot be a study's looks (None when it can): seeds 0..n_k-1 are judged at look k."""
    ok = (isinstance(looks, list) and bool(looks) and all(isinstance(n, int) and not isinstance(n, bool) for n in looks)
          and looks[0] >= 2 and all(b > a for a, b in zip(looks, looks[1:])))
    return None if ok else f"must be {LOOKS_HELP}; got {looks!r}"


def looks_reached(measures: Mapping[str, Mapping[int, float]], arms: Sequence[str], seeds: Sequence[int],
                  looks: Sequence[int]) -> int:
    """How many looks every arm has reached: look k is reached when each arm has a run at seed
    position n_k - 1 of the study's seed list or later (a failed run earlier does not block it)."""
    last = min((max((i for i, s in enumerate(seeds) if s in measures.get(a, {})), default=-1) for a in arms))
    return sum(n - 1 <= last for n in looks)


def judge(claim: ClaimSpec, measures: Mapping[str, Mapping[int, float]], seeds: Sequence[int] | None = None,
          looks: Sequence[int] | None = None) -> ClaimResult:
    """The claim's verdict from per-arm, per-seed measures (`measures[arm][seed]`).

    `seeds`: the study's seed list, in order (default: the seeds present, sorted); `looks`: seeds
    at each look (default: one look at all of `seeds`). Look k uses `seeds[:looks[k]]` only.
    """
    import numpy as np

    from workbench.sweep import sequential as sq

    seeds = list(seeds) if seeds is not None else sorted({s for m in measures.values() for s in m})
    looks = tuple(looks) if looks is not None else (len(seeds),)
    seeds = seeds[:looks[-1]]
    pairs = list(zip(claim.arms, claim.arms[1:]))
    reached = looks_reached(measures, claim.arms, seeds, looks) if seeds else 0
    binary, margin, sign = is_binary(claim.measure), claim.equivalence_margin, 1.0 if claim.expect == "higher" else -1.0
    alpha = sq.look_alpha(len(looks), len(pairs), ALPHA)
    if reached == 0:
        links = [Link(a, b, 0, math.nan, math.nan, math.nan, math.nan, alpha, 0, "undecided", None, math.nan,
                      math.nan) for a, b in pairs]
        return ClaimResult(claim, links, "undecided", None, looks, 0, margin)
    nan = float("nan")
    diffs = [np.array([[measures.get(a, {}).get(s, nan) - measures.get(b, {}).get(s, nan) for s in seeds]])
             for a, b in pairs]
    decision = sq.decide_claim(diffs, looks[:reached], binary, margin, sign, ALPHA, n_looks=len(looks))
    links = [_link(a, b, d[0], ld, looks, reached, alpha, binary, sign)
             for (a, b), d, ld in zip(pairs, diffs, decision.links)]
    look = int(decision.look[0])
    return ClaimResult(claim, links, sq.VERDICTS[decision.verdict[0]], look + 1 if look >= 0 else None, looks,
                       reached, margin)


def _link(first: str, second: str, diffs, ld, looks, reached: int, alpha: float, binary: bool, sign: float) -> Link:
    import numpy as np

    from workbench.sweep import sequential as sq

    k = int(ld.look[0]) if ld.look[0] >= 0 else reached - 1
    st = ld.stats
    n, sd = int(st.n[0, k]), st.sd[0, k]
    undecided = ld.verdict[0] == sq.UNDECIDED
    used = diffs[:looks[k]]
    agree = int((sign * used[np.isfinite(used)] > 0).sum())
    detect = float(sq.detectable_effect(sd, n, alpha, binary)) if undecided and n >= 2 else math.nan
    detect_max = float(sq.detectable_effect(sd, looks[-1], alpha, binary)) if undecided and n >= 2 else math.nan
    return Link(first, second, n, float(st.effect[0, k]), float(st.low[0, k]), float(st.high[0, k]),
                float(st.p[0, k]), alpha, agree, sq.VERDICTS[ld.verdict[0]], k + 1 if not undecided else None,
                detect, detect_max)


def arms_needing_seeds(results: Sequence[ClaimResult]) -> set[str]:
    """Arms that still need the next look's seeds: those in a claim that is undecided and has a look left.

    An arm all of whose claims are decided (or at their last look) stops getting seeds.
    """
    return {arm for r in results if r.verdict == "undecided" and r.reached < len(r.looks) for arm in r.claim.arms}


def check_claims(claims: Sequence[ClaimSpec], arms: Sequence[str] | None, n_seeds: int | None,
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
    if claims and n_seeds is not None and n_seeds < MIN_SEEDS:
        errors.append(f"seeds: a claims study needs at least {MIN_SEEDS} seeds (paired by seed), got {n_seeds}")
    return errors


def claims_tag(claims: Sequence[ClaimSpec], looks: Sequence[int] | None = None) -> dict[str, str]:
    """The parent-run tag that stores `claims` and the study's looks (empty for no claims)."""
    if not claims:
        return {}
    return {TAG_CLAIMS: json.dumps({"claims": [c.model_dump() for c in claims],
                                    **({"looks": list(looks)} if looks else {})})}


def declared_claims(tags: Mapping[str, str]) -> list[ClaimSpec]:
    """The claims a study's parent run declared; [] for a study without claims."""
    raw = tags.get(TAG_CLAIMS)
    if not raw:
        return []
    data = json.loads(raw)
    return [ClaimSpec.model_validate(c) for c in (data["claims"] if isinstance(data, dict) else data)]


def declared_looks(tags: Mapping[str, str]) -> list[int] | None:
    """The looks a study's parent run declared; None when it declared none (one look at all its seeds)."""
    raw = tags.get(TAG_CLAIMS)
    data = json.loads(raw) if raw else None
    return list(data["looks"]) if isinstance(data, dict) and data.get("looks") else None
