"""Does the entropy push predict the sign of the next entropy change? A micro model, a few steps.

    python benchmarks/entropy_push.py                    # micro-0.5m, 2 seeds x 12 steps, ~2 min on an idle 2-core machine
    python benchmarks/entropy_push.py --seeds 0 1 2 --steps 24 --objective grpo --lr 1e-4
    python benchmarks/entropy_push.py --study claims_onpolicy --tracking-uri sqlite:///mlflow.db  # stored runs

Steps whose batch has no regime tokens (every group's rewards equal: push undefined) are
left out of n.

Each run trains micro-0.5m (no SFT warm start, 4 prompts x 4 samples, 4 updates per rollout
batch, rollout_lag 0) and logs, per step t, the summed per-regime pushes P_t
(workbench.core.regimes: first-order entropy change per unit natural-gradient step, positive
= entropy up) and entropy/mean H_t (over the step's update minibatches). The prediction for
step t is sign(P_t); the measured change is H_{t+1} - H_t (the next step samples and measures
under the policy step t's updates left). Printed: the share of steps where the signs agree, n,
and the base rate (share of the more common sign of the measured change), which a constant
guess would reach; agreement is informative only above it. Entropy/mean of one step is an
average over 16 fresh samples, so small changes are noisy. Load average printed.

`--study` reads the same two series off every stored run of a study instead (e.g. a claims
study: warm-started runs, 16 updates per rollout batch) and prints, per arm and over all runs,
the agreement, its base rate and the Spearman correlation between P_t and H_{t+1} - H_t, also
with H_t partialled out (see `summary`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workbench import tracking  # noqa: E402
from workbench.config import build_run_config  # noqa: E402
from workbench.names import ENTROPY_MEAN, ENTROPY_PUSH, REGIMES, regime_key  # noqa: E402
from workbench.train.trainer import train  # noqa: E402


def run(seed: int, steps: int, objective: str, lr: float, root: str) -> tuple[list[float], list[float]]:
    """(push per step, entropy per step) of one run."""
    cfg = build_run_config({
        "model": {"name": "micro-0.5m"}, "sft": {"enabled": False}, "steps": steps, "threads": 1, "seed": seed,
        "objective": {"name": objective}, "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 24},
        "updates_per_rollout": 4, "rollout_lag": 0, "lr": lr, "eval": {"every": 1000, "k": 1, "limit": 2},
        "sample_every": 1000, "checkpoint_every": 1000,
        # An untrained model never answers right; a penalty linear in length from 0 tokens on gives
        # nearly every group mixed rewards (a buffer of 20 left most steps with no regime token).
        "overlong": {"enabled": True, "buffer": 24, "factor": 1.0}})
    uri = f"sqlite:///{root}/m{seed}.db"
    result = train(cfg, tracking_uri=uri, progress=False, checkpoint_root=f"{root}/ck{seed}")
    keys = [regime_key(g, ENTROPY_PUSH) for g in REGIMES] + [ENTROPY_MEAN]
    hist = tracking.metric_histories(result.run_id, keys, tracking_uri=uri)
    return series({k: dict(v) for k, v in hist.items()})


def series(by_step: dict[str, dict[int, float]]) -> tuple[list[float], list[float]]:
    """(summed push, entropy) per step from a run's {key: {step: value}}."""
    steps_seen = sorted(by_step.get(ENTROPY_MEAN, {}))
    push = [sum(v for g in REGIMES
                if not math.isnan(v := by_step.get(regime_key(g, ENTROPY_PUSH), {}).get(s, math.nan)))
            for s in steps_seen]
    return push, [by_step[ENTROPY_MEAN][s] for s in steps_seen]


def pairs_of(push: list[float], ent: list[float]) -> list[tuple[float, float, float]]:
    """(P_t, H_{t+1} - H_t, H_t) for the steps with a push and a change."""
    return [(p, h1 - h0, h0) for p, h0, h1 in zip(push, ent, ent[1:]) if p != 0 and h1 != h0]


def summary(pairs: list[tuple[float, float, float]]) -> str:
    """Sign agreement, its base rate, the rank correlation of P_t with the change, and that correlation
    with H_t partialled out: H_t is a noisy average, so the change regresses to the mean (it falls
    where H_t was high) and any push that grows with H_t correlates negatively with the change."""
    import numpy as np
    from scipy import stats

    n = len(pairs)
    if n < 3:
        return f"n={n}"
    p, d, h = (np.array(x) for x in zip(*pairs))
    agree = float(((p > 0) == (d > 0)).mean())
    ups = int((d > 0).sum())
    rho, pval = stats.spearmanr(p, d)
    rp, rd, rh = (stats.rankdata(x) for x in (p, d, h))
    resid = [y - np.polyval(np.polyfit(rh, y, 1), rh) for y in (rp, rd)]
    partial = float(np.corrcoef(*resid)[0, 1])
    return (f"sign agreement {agree:.2f} (n={n}), base rate {max(ups, n - ups) / n:.2f}, "
            f"Spearman {rho:+.2f} (p={pval:.2g}), given H_t {partial:+.2f}")


def from_study(study: str, uri: str) -> None:
    from workbench.names import TAG_ARM

    target = tracking.resolve_target(study, uri)
    tracking.load_histories(target.runs, uri)
    by_arm: dict[str, list[tuple[float, float]]] = {}
    for r in target.runs:
        hist = {k: dict(zip(m.steps.tolist(), m.values.tolist())) for k, m in r.metrics.items()}
        by_arm.setdefault(r.tags.get(TAG_ARM, r.name), []).extend(pairs_of(*series(hist)))
    for arm, pairs in by_arm.items():
        print(f"{arm}: {summary(pairs)}")
    print(f"all {len(target.runs)} runs of {study}: {summary([p for ps in by_arm.values() for p in ps])}; "
          f"load {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", help="read the runs of this stored study instead of training")
    ap.add_argument("--tracking-uri", help="where --study is stored")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--objective", default="dispo")
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    if args.study:
        from_study(args.study, args.tracking_uri)
        return
    agree = n = ups = 0
    with tempfile.TemporaryDirectory() as root:
        for seed in args.seeds:
            push, ent = run(seed, args.steps, args.objective, args.lr, root)
            pairs = pairs_of(push, ent)
            a = sum((p > 0) == (d > 0) for p, d, _ in pairs)
            u = sum(d > 0 for _, d, _ in pairs)
            print(f"seed {seed}: agree {a}/{len(pairs)}  entropy up {u}/{len(pairs)}  "
                  f"push mean {sum(push) / len(push):+.3e}  entropy {ent[0]:.4f} -> {ent[-1]:.4f}")
            agree, n, ups = agree + a, n + len(pairs), ups + u
    base = max(ups, n - ups) / n if n else math.nan
    print(f"{args.objective} lr {args.lr:g}: sign agreement {agree / n if n else math.nan:.2f} (n={n}); "
          f"base rate {base:.2f}; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
