"""The claims tables of docs/results.md, printed as markdown from a claims study's stored runs.

    python benchmarks/claims_tables.py claims_onpolicy --tracking-uri sqlite:///path/mlflow.db

Prints, for one study: the verdict table (one row per claim link, at the look that decided it,
else the last look reached), how far each arm's bounds bound (per run the median over steps of
ratio/abs_dev_mean and of each regime's clip_frac, then the mean over the arm's seeds), the
seeds each arm ran, its held-out accuracy at the start and the end, its collapses, and each
arm's mean entropy push per regime (the mechanism behind claims 1 and 2). Every number comes
from the functions `dispo-wb report` uses (workbench.report.claims), so the docs' tables are the
report's numbers.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from statistics import fmean

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workbench import tracking  # noqa: E402
from workbench.names import REGIMES, TAG_ARM, TAG_COLLAPSE  # noqa: E402
from workbench.report import claims as rc  # noqa: E402
from workbench.report.runs import accuracy_key, final_value, start_value  # noqa: E402
from workbench.sweep.measures import run_measure  # noqa: E402


def fmt(x: float, digits: int = 3, sign: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def mean_ok(xs: list[float]) -> float:
    ok = [x for x in xs if not math.isnan(x)]
    return fmean(ok) if ok else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("--tracking-uri", required=True)
    args = ap.parse_args()

    target = tracking.resolve_target(args.study, args.tracking_uri)
    tracking.load_histories(target.runs, args.tracking_uri)
    info = rc.study_claims_info(target.runs, tracking.run_tags(target.anchor_run_id, args.tracking_uri))
    if info is None:
        sys.exit(f"error: {args.study} declared no claims")
    print(f"study {args.study}: {len(target.runs)} runs\n")
    print("| claim | compared (measure, margin) | verdict (look, seeds) | paired effect [interval] | p (alpha) "
          "| seeds agree | detectable at 80% power (now, at the last look) |")
    print("|---|---|---|---|---|---|---|")
    for res in info.results:
        for i, link in enumerate(res.links):
            verdict = res.verdict if i == 0 else ""
            if i == 0 and res.look:
                verdict = f"**{res.verdict}** (look {res.look}, {res.looks[res.look - 1]} seeds)"
            elif i == 0:
                verdict = f"undecided (after look {res.reached} of {len(res.looks)})"
            what = f"{link.first} - {link.second} ({res.claim.measure}, {res.margin:g})"
            detect = ("" if link.verdict != "undecided" else
                      f"{rc.detectable_text(link.detectable)}, {rc.detectable_text(link.detectable_at_max)}")
            print(f"| {res.claim.id if i == 0 else ''} | {what} | {verdict} | {fmt(link.effect)} "
                  f"[{fmt(link.low)}, {fmt(link.high)}] | {link.p:.3g} ({link.alpha:.3g}) | {link.agree}/{link.n} "
                  f"| {detect} |")

    acc = accuracy_key(target.runs)
    by_arm: dict[str, list] = {}
    for r in target.runs:
        if r.tags.get(TAG_ARM):
            by_arm.setdefault(r.tags[TAG_ARM], []).append(r)
    rows = {row.arm: row for row in info.arms}
    print("\n| arm | seeds | median abs(r - 1) | clip_frac " + " / ".join(REGIMES) + " | avg@k start -> end "
          "| collapsed | entropy push " + " / ".join(REGIMES) + " |")
    print("|---|---|---|---|---|---|---|")
    for arm, runs in by_arm.items():
        row = rows[arm]
        clip = " / ".join(fmt(row.clip_frac[g], 3, False) for g in REGIMES)
        start = mean_ok([start_value(r, acc) for r in runs])
        end = mean_ok([final_value(r, acc) for r in runs])
        kinds = sorted({r.tags.get(TAG_COLLAPSE) for r in runs} - {None, "none"})
        collapsed = f"{row.collapsed}" + (f" ({', '.join(kinds)})" if kinds else "")
        push = " / ".join(fmt(mean_ok([run_measure(r, f"entropy_push:{g}", acc) for r in runs]), 4) for g in REGIMES)
        print(f"| {arm} | {len(runs)} | {fmt(row.abs_dev, 3, False)} | {clip} | {fmt(start, 3, False)} -> "
              f"{fmt(end, 3, False)} | {collapsed} | {push} |")


if __name__ == "__main__":
    main()
