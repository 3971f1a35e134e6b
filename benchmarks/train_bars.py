"""Figures for the training-run bars, on the default micro config (DISPO, micro-3m).

    python benchmarks/train_bars.py gain       # 3 seeds: held-out accuracy at the SFT start vs the end, run time,
                                               # whether the bounds bind (clip_frac, |r - 1|, token_frac partition)
    python benchmarks/train_bars.py neg_up     # eps_neg_up 0.01 vs 10, 3 seeds each: clip_mass and the curves
    python benchmarks/train_bars.py tracking   # the same run with tracking on and off, and time inside MLflow calls
    python benchmarks/train_bars.py tradeoff [--only 0 3]   # the runs of README's gain-vs-binding tables

Each subcommand prints one table; runs go to a temporary SQLite store unless --store is given.
SFT warm starts come from the shared cache (.cache/sft); the first use of a seed builds it
(about 2 minutes for micro-3m), which is not part of a run's time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from workbench import tracking
from workbench.config import build_run_config
from workbench.core.regimes import REGIMES
from workbench.train.trainer import train

SEEDS = (0, 1, 2)


THREADS = 2


def _run(over: dict, store: str, track: bool = True):
    cfg = build_run_config({"threads": THREADS, **over})
    return train(cfg, tracking_uri=store, progress=False, track=track)


def _median(series: list[tuple[int, float]]) -> float:
    vals = [v for _, v in series if v == v]
    return statistics.median(vals) if vals else float("nan")


def _clip_medians(h: dict) -> list[float]:
    """Median over steps of clip_frac, per regime (REGIMES order)."""
    return [_median(h[f"regime/{r}/clip_frac"]) for r in REGIMES]


def gain(store: str) -> None:
    keys = ["eval/micro/accuracy", "ratio/abs_dev_mean"] + [f"regime/{r}/{s}" for r in REGIMES for s in ("clip_frac", "token_frac")]
    print("seed  sft_start  final   gain   run_s  " + "  ".join(f"clip_{r}" for r in REGIMES) + "  |r-1|  frac_sum")
    gains = []
    for seed in SEEDS:
        res = _run({"seed": seed}, store)
        h = tracking.metric_histories(res.run_id, keys, store)
        acc = h["eval/micro/accuracy"]
        start, end = acc[0][1], acc[-1][1]
        gains.append(end - start)
        sums = [sum(v for k in (f"regime/{r}/token_frac" for r in REGIMES) for s, v in h[k] if s == step)
                for step, _ in h["regime/pos_up/token_frac"]]
        clips = "  ".join(f"{c:>12.3f}" for c in _clip_medians(h))
        print(f"{seed:>4}  {start:>9.3f}  {end:>5.3f}  {end - start:>+5.3f}  {res.wall_s:>6.0f}  {clips}  "
              f"{_median(h['ratio/abs_dev_mean']):.3f}  {min(sums):.3f}-{max(sums):.3f}  ({res.status}, collapse={res.collapse})")
    print(f"mean gain over seeds: {statistics.fmean(gains):+.3f}")


# README "The gain and the binding bounds pull against each other": (seed, overrides of the default run).
_LOW = {"sft": {"target_low": 0.4}}
_MASK = {"objective": {"name": "dispo", "params": {"mask_mode": True}}}
_LONG = {"steps": 120, "eval": {"every": 20}}  # the whole five-minute budget


def _neg(**eps: float) -> dict:
    """Incorrect-response bounds loosened (10: the bound never binds at this scale)."""
    return {"objective": {"name": "dispo", "params": eps}}


TRADEOFF = [
    (0, {"lr": 1e-5, "eval": {"every": 20}}),
    (0, {"lr": 1e-5, "rollout_lag": 32, "steps": 40, "rollout": {"prompts_per_step": 32}}),
    (1, {"lr": 1e-5, "rollout_lag": 32, "steps": 40, "rollout": {"prompts_per_step": 32}}),
    (0, {"lr": 2e-5, "rollout_lag": 16, "steps": 40, "rollout": {"prompts_per_step": 32}}),
    (1, {"lr": 1e-5, "rollout_lag": 16, "steps": 25, "rollout": {"prompts_per_step": 64}, "eval": {"every": 5}}),
    (1, {"lr": 2e-5, "rollout_lag": 16, "updates_per_rollout": 4}),
    (1, {"lr": 2e-5, "rollout_lag": 0, "updates_per_rollout": 4}),
    (1, {"lr": 4e-5, "rollout_lag": 0, "updates_per_rollout": 4}),
    (0, _LOW), (1, _LOW), (1, {"lr": 1e-5, **_LOW}), (2, _LOW),
    (0, {"lr": 1e-5, **_MASK}), (1, {"lr": 1e-5, **_MASK}),
    (1, {"lr": 1e-5, **_LOW, **_MASK}), (2, {"lr": 1e-5, **_LOW, **_MASK}),
    # README "120 steps": the whole five-minute budget; default bounds, mask_mode, rollout temperature,
    # then the incorrect-response bounds loosened.
    *[(s, _LONG) for s in SEEDS],
    *[(s, {**_LONG, **_MASK}) for s in SEEDS],
    *[(s, {**_LONG, "rollout": {"temperature": 1.2}}) for s in SEEDS],
    *[(s, {**_LONG, **_neg(eps_neg_up=10)}) for s in SEEDS],
    *[(s, {**_LONG, **_neg(eps_neg_up=10, eps_neg_down=10)}) for s in SEEDS],
]


def tradeoff(store: str, only: list[int] | None) -> None:
    """Each run: avg@4 start -> end, median clip_frac per regime, and whether it meets both bars."""
    keys = ["eval/micro/accuracy", "ratio/abs_dev_mean"] + [f"regime/{r}/clip_frac" for r in REGIMES]
    for i, (seed, over) in enumerate(TRADEOFF):
        if only is not None and i not in only:
            continue
        res = _run({"seed": seed, "eval": {"every": 10}, **over}, store)
        h = tracking.metric_histories(res.run_id, keys, store)
        acc = h["eval/micro/accuracy"]
        clips = _clip_medians(h)
        gain_ = acc[-1][1] - acc[0][1]
        dev = _median(h["ratio/abs_dev_mean"])
        both = gain_ >= 0.10 and min(clips) >= 0.05 and dev >= 0.05
        print(f"{i:>2} seed {seed} {over}: avg@4 {acc[0][1]:.3f} -> {acc[-1][1]:.3f} (peak {max(v for _, v in acc):.3f}) "
              f"gain {100 * gain_:+.1f}  clip {'/'.join(f'{c:.3f}' for c in clips)}  "
              f"|r-1| {dev:.3f}  {res.wall_s:.0f}s  collapse={res.collapse}  both bars: {'yes' if both else 'no'}")


def neg_up(store: str) -> None:
    curves = ["entropy/mean", "response/length_mean", "response/repetition_rate", "eval/micro/accuracy",
              "regime/neg_up/clip_mass", "regime/neg_up/clip_frac"]
    arms: dict[float, list[dict]] = {0.01: [], 10.0: []}
    for eps in arms:
        for seed in SEEDS:
            res = _run({"seed": seed, "objective": {"name": "dispo", "params": {"eps_neg_up": eps}}}, store)
            arms[eps].append({**tracking.metric_histories(res.run_id, curves, store), "collapse": res.collapse})
    mass = {eps: statistics.fmean(_median(r["regime/neg_up/clip_mass"]) for r in runs) for eps, runs in arms.items()}
    ratio = f"{mass[0.01] / mass[10.0]:.1f}x" if mass[10.0] > 1e-6 else "unbounded: the loose bound never clipped"
    print(f"median regime/neg_up/clip_mass, mean of {len(SEEDS)} seeds: eps 0.01 -> {mass[0.01]:.4f}, "
          f"eps 10 -> {mass[10.0]:.2e}  (ratio {ratio})")
    for eps, runs in arms.items():
        print(f"eps_neg_up={eps}: collapse flags {[r['collapse'] for r in runs]}")
        for key in curves[:4]:
            steps = [s for s, _ in runs[0][key]]
            pick = steps[:: max(1, len(steps) // 6)] + ([steps[-1]] if steps[-1] not in steps[:: max(1, len(steps) // 6)] else [])
            mean = [statistics.fmean(dict(r[key]).get(s, float("nan")) for r in runs) for s in pick]
            print(f"  {key:<26} " + " ".join(f"{s}:{m:.3f}" for s, m in zip(pick, mean)))


def tracking_cost(store: str) -> None:
    spent = {"s": 0.0}
    cls = tracking.RunTracker
    for name in ("log_metrics", "set_tags", "log_text", "log_table", "finish"):
        original = getattr(cls, name)

        def timed(self, *a, _f=original, **k):
            t = time.perf_counter()
            try:
                return _f(self, *a, **k)
            finally:
                spent["s"] += time.perf_counter() - t

        setattr(cls, name, timed)
    over = {"seed": 0, "steps": 30}
    t = time.perf_counter()
    _run(over, store, track=True)
    on = time.perf_counter() - t
    inside = spent["s"]
    t = time.perf_counter()
    _run(over, store, track=False)
    off = time.perf_counter() - t
    print(f"run with tracking {on:.1f}s, without {off:.1f}s: difference {100 * (on - off) / off:+.1f}% "
          f"(run-to-run noise included); time inside MLflow calls {inside:.2f}s = {100 * inside / on:.2f}% of the run")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["gain", "neg_up", "tracking", "tradeoff"])
    p.add_argument("--only", type=int, nargs="+", help="tradeoff: run these rows only (0-based)")
    p.add_argument("--store", help="MLflow tracking URI (default: a temporary SQLite store)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run (1 when two benchmarks share 2 cores)")
    a = p.parse_args()
    global THREADS
    THREADS = a.threads
    with tempfile.TemporaryDirectory() as d:
        store = a.store or f"sqlite:///{Path(d) / 'mlflow.db'}"
        if a.what == "tradeoff":
            tradeoff(store, a.only)
        else:
            {"gain": gain, "neg_up": neg_up, "tracking": tracking_cost}[a.what](store)


if __name__ == "__main__":
    main()
