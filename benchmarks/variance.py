"""The micro testbed's variance budget: how much the same config moves from seed to seed, and why.

    # before: the default run config, each seed with its own greedy-stopped warm start
    python benchmarks/variance.py run --experiment variance-before --seeds 0-4
    # after: the claims study's base arm (one sampled-stopped warm start, 400 held-out problems)
    dispo-wb sweep run studies/claims.yaml
    # the budget, one row per target (an experiment, a study, anything `dispo-wb report` takes)
    python benchmarks/variance.py table variance-before claims --arm base

For each target it reads the finished runs from MLflow (with `--arm`, those of that arm only)
and prints over the seeds: start accuracy (held-out avg@k at step 0, i.e. the warm start), final
accuracy, gain, late entropy (mean `entropy/mean` over the last third of the steps, the claims'
exploration measure) with their standard deviations; the held-out noise floor (the root mean
square of the final evaluation's standard error over problems: the spread two evaluations of
one model would show); and how much of the final accuracy's variance the warm start explains
(R^2 of final on start accuracy over the seeds; 0 when every seed starts from one warm start,
`sft.seed`, whose start accuracies then differ by evaluation noise only).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workbench import tracking  # noqa: E402
from workbench.names import FINISHED, TAG_ARM  # noqa: E402
from workbench.sweep.measures import run_measure  # noqa: E402
from workbench.report.runs import accuracy_key, curve, final_value, start_value  # noqa: E402


def seeds_arg(text: str) -> list[int]:
    """'0-4' or '0,2,5'."""
    if "-" in text:
        lo, hi = text.split("-", 1)
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def budget(runs: list, acc_key: str) -> dict[str, float]:
    """Per-seed figures of one config and their spread (sample standard deviations)."""
    start = np.array([start_value(r, acc_key) for r in runs])
    final = np.array([final_value(r, acc_key) for r in runs])
    entropy = np.array([run_measure(r, "entropy_late", acc_key) for r in runs])
    se_key = acc_key.removesuffix("accuracy") + "accuracy_se"
    ses = np.array([final_value(r, se_key) for r in runs])
    sd = lambda x: float(np.std(x[~np.isnan(x)], ddof=1)) if (~np.isnan(x)).sum() > 1 else math.nan  # noqa: E731
    r2 = math.nan
    shared = {r.params.get("sft.seed") for r in runs}
    if len(shared) == 1 and shared.pop() not in (None, "None"):
        r2 = 0.0  # one warm start (`sft.seed`) for every seed: their start accuracies differ by evaluation noise only
    elif np.ptp(start) > 0 and np.ptp(final) > 0:
        r2 = float(np.corrcoef(start, final)[0, 1] ** 2)
    return {
        "seeds": len(runs), "start_mean": float(np.nanmean(start)), "start_sd": sd(start),
        "final_mean": float(np.nanmean(final)), "final_sd": sd(final), "gain_sd": sd(final - start),
        "entropy_late_mean": float(np.nanmean(entropy)), "entropy_late_sd": sd(entropy),
        "eval_noise": float(np.sqrt(np.nanmean(ses ** 2))), "warm_start_r2": r2,
    }


def table(args) -> None:
    print("| target | seeds | start avg@k (sd) | final avg@k (sd) | gain sd | held-out noise | warm start R^2 "
          "| late entropy (sd) |")
    print("|---|---|---|---|---|---|---|---|")
    for target in args.targets:
        found = tracking.resolve_target(target, args.tracking_uri)
        runs = [r for r in found.runs if r.status == FINISHED and (args.arm is None or r.tags.get(TAG_ARM) == args.arm)]
        if not runs:
            sys.exit(f"{target}: no finished runs{f' of arm {args.arm!r}' if args.arm else ''}")
        tracking.load_histories(runs, args.tracking_uri)
        acc_key = accuracy_key(runs)
        if acc_key is None or curve(runs[0], acc_key) is None:
            sys.exit(f"{target}: runs have no held-out accuracy")
        b = budget(runs, acc_key)
        print(f"| {target}{f' ({args.arm})' if args.arm else ''} | {b['seeds']} | {b['start_mean']:.3f} ({b['start_sd']:.3f}) "
              f"| {b['final_mean']:.3f} ({b['final_sd']:.3f}) | {b['gain_sd']:.3f} | {b['eval_noise']:.3f} "
              f"| {b['warm_start_r2']:.2f} | {b['entropy_late_mean']:.3f} ({b['entropy_late_sd']:.3f}) |")


def run(args, extra: list[str]) -> None:
    """One `dispo-wb train` per seed, one after another, each in its own process."""
    exe = Path(sys.executable).with_name("dispo-wb")
    for seed in seeds_arg(args.seeds):
        cmd = [str(exe), "train", "--seed", str(seed), "--threads", str(args.threads), "--quiet",
               "--experiment", args.experiment, "--run-name", f"{args.experiment}-s{seed}", *extra]
        if args.tracking_uri:
            cmd += ["--tracking-uri", args.tracking_uri]
        print("$", " ".join(cmd), f"(load {os.getloadavg()[0]:.1f})", flush=True)
        subprocess.run(cmd, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="the variance budget of stored runs")
    t.add_argument("targets", nargs="+", help="experiment or study names (as `dispo-wb report` takes)")
    t.add_argument("--arm", help="a study's arm (the `dispo.arm` tag); default: every finished run")
    t.add_argument("--tracking-uri", default=None)
    r = sub.add_parser("run", help="train one config on several seeds (extra arguments go to dispo-wb train)")
    r.add_argument("--experiment", required=True)
    r.add_argument("--seeds", default="0-4")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--tracking-uri", default=None)
    args, extra = p.parse_known_args()
    if args.cmd == "table":
        if extra:
            p.error(f"unknown arguments: {' '.join(extra)}")
        table(args)
    else:
        run(args, extra)


if __name__ == "__main__":
    main()
