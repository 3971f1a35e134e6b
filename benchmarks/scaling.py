"""How a dispo-wb step, its memory and its checkpoint grow: one axis at a time, with a fitted exponent.

    python benchmarks/scaling.py axes                 # model size, response length, group size, rollout lag
    python benchmarks/scaling.py axes --axes model length --rollouts 3
    python benchmarks/scaling.py grid                 # micro-0.5m/3m/15m x 32/64/128 new tokens
    python benchmarks/scaling.py lag                  # micro-3m, peak RSS at rollout_lag 0/16/32/64/128

Every cell is one training run in its own process (the `ours` arm of `benchmarks/vs_trl.py`:
16 prompts, 16 AdamW steps per rollout batch, old log-probs from the decode loop, the run written
by a child process), one warm-up step then `--rollouts` measured steps, medians of the measured
ones. The models are freshly initialised (no SFT warm start): such a model samples nearly
uniformly from the 36-token vocabulary, so <eos> comes with probability ~1/31 per token and the
mean response length ("len") grows less than the cap "new" (about 21, 28 and 31 tokens at 32, 64
and 128). The load average is printed with each cell; compare cells from one invocation only.

`axes` varies one axis from the base point (micro-3m, 32 new tokens, group size 8, lag 64) and
fits, by least squares on logarithms, the exponent b of `y = a x^b` for s/step (wall), CPU s/step
(the training process's CPU seconds per step, 1 thread: less moved by other jobs on the machine
than wall time), peak RSS of the training process and the end-of-run checkpoint, per axis: model size (x = parameters: micro-0.5m,
3m, 15m), response length (x = the mean response length measured, at 32/64/128 new tokens),
group size (x = responses per step: 16 prompts x 4/8/16) and rollout lag (x = lag / 16 + 1, the
weight snapshots a run holds, at lag 16/32/64/128). A power law is a summary, not a model: memory
is a constant (interpreter, torch, MLflow) plus what grows, so its exponent is far below 1 even
where the growing part is linear; the fitted lines print the residual spread so a poor fit shows.

`lag` runs enough rollout batches for the snapshot ring to fill (lag / 16 + 2) and prints the
process's peak RSS and the end-of-run checkpoint, so the growth per 16 steps of lag can be read
off (one full copy of the weights per 16 steps of lag).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_trl import PHASES, _run_arm  # noqa: E402 - the arm and its subprocess runner are shared

BASE = {"model": "micro-3m", "new_tokens": 32, "group_size": 8, "lag": 64}
AXES = {
    "model": ("model", ["micro-0.5m", "micro-3m", "micro-15m"]),
    "length": ("new_tokens", [32, 64, 128]),
    "group": ("group_size", [4, 8, 16]),
    "lag": ("lag", [16, 32, 64, 128]),
}


def _argv(model: str, new_tokens: int, rollouts: int, lag: int, threads: int, group_size: int = 8) -> list[str]:
    return ["--model", model, "--new-tokens", str(new_tokens), "--rollouts", str(rollouts), "--lag", str(lag),
            "--threads", str(threads), "--group-size", str(group_size), "--arms", "ours", "--no-sft"]


def _param_count(name: str) -> int:
    from workbench.models.policy import build_char_tokenizer, build_micro_model, param_count

    return param_count(build_micro_model(name, build_char_tokenizer(), seed=0))


def fit_power(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares of log y = log a + b log x: (b, a, the largest |residual| as a factor, e.g. 1.08)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    b = sum((u - mx) * (v - my) for u, v in zip(lx, ly)) / sum((u - mx) ** 2 for u in lx)
    a = my - b * mx
    spread = max(abs(v - (a + b * u)) for u, v in zip(lx, ly))
    return b, math.exp(a), math.exp(spread)


def axes(args) -> None:
    print(f"one axis at a time from {BASE}, {args.threads} threads, 16 prompts, 16 updates per rollout batch; "
          f"{args.rollouts} measured rollout batches per cell after one warm-up")
    fits = []
    for axis in args.axes:
        key, values = AXES[axis]
        rows = []
        print(f"\n{axis}: {key} in {values}")
        print(f"{key:>12} {'x':>9} {'s/step':>7} {'CPU s':>6}  " + " ".join(f"{p:>8}" for p in PHASES)
              + f" {'len':>5} {'RSS MB':>7} {'writer':>7} {'ckpt MB':>8}  load")
        for v in values:
            cell = {**BASE, key: v}
            rollouts = max(args.rollouts, cell["lag"] // 16 + 1) if axis == "lag" else args.rollouts
            load = os.getloadavg()[0]
            r = _run_arm("ours", _argv(cell["model"], cell["new_tokens"], rollouts, cell["lag"], args.threads,
                                       cell["group_size"]))
            x = {"model": lambda: _param_count(v), "length": lambda: r["length_mean"],
                 "group": lambda: 16 * v, "lag": lambda: v / 16 + 1}[axis]()
            rows.append((x, r))
            print(f"{str(v):>12} {x:9.4g} {r['s_per_step']:7.2f} {r['cpu_s_per_step']:6.2f}  "
                  + " ".join(f"{r[p]:8.2f}" for p in PHASES)
                  + f" {r['length_mean']:5.1f} {r['peak_rss_mb']:7.0f} {r['writer_rss_mb']:7.0f} "
                  f"{r['checkpoint_mb']:8.1f}  {load:.2f} -> {os.getloadavg()[0]:.2f}", flush=True)
        xs = [x for x, _ in rows]
        for what, k in (("s/step", "s_per_step"), ("CPU s/step", "cpu_s_per_step"), ("peak RSS", "peak_rss_mb"),
                        ("checkpoint", "checkpoint_mb")):
            b, a, spread = fit_power(xs, [r[k] for _, r in rows])
            fits.append((axis, what, b, spread))
            print(f"  {what:10s} ~ x^{b:.2f} (largest residual x{spread:.2f})")
    print("\nfitted exponents (y ~ x^b), one invocation:")
    for axis, what, b, spread in fits:
        print(f"  {axis:7s} {what:10s} b = {b:5.2f}  (largest residual x{spread:.2f})")


def grid(args) -> None:
    print(f"s/step, {args.threads} threads, lag {args.lag}, 16 prompts x 8 samples, 16 updates per rollout batch; "
          f"{args.rollouts} measured rollout batches per cell after one warm-up")
    print(f"{'model':>11} {'new':>4} {'s/step':>7}  " + " ".join(f"{p:>8}" for p in PHASES)
          + f" {'len':>5} {'tok/s':>7} {'RSS MB':>7}  load")
    rows = []
    for model in args.models:
        for n in args.new_tokens:
            load = os.getloadavg()[0]
            r = _run_arm("ours", _argv(model, n, args.rollouts, args.lag, args.threads))
            rows.append((model, n, r))
            print(f"{model:>11} {n:>4} {r['s_per_step']:7.2f}  " + " ".join(f"{r[p]:8.2f}" for p in PHASES)
                  + f" {r['length_mean']:5.1f} {r['real_tok_s']:7.0f} {r['peak_rss_mb']:7.0f}  {load:.2f} -> {os.getloadavg()[0]:.2f}",
                  flush=True)
    for model in args.models:  # growth with response length, relative to the shortest
        mine = [(n, r) for m, n, r in rows if m == model]
        if len(mine) > 1:
            n0, r0 = mine[0]
            print(f"{model}: s/step relative to {n0} new tokens: "
                  + ", ".join(f"{n}: {r['s_per_step'] / r0['s_per_step']:.2f}x" for n, r in mine))


def lag(args) -> None:
    print(f"peak RSS against rollout_lag, {args.models[0]}, {args.new_tokens[0]} new tokens, 16 updates per rollout "
          f"batch, {args.threads} threads")
    base = None
    for lg in args.lags:
        rollouts = max(1, lg // 16 + 1)  # plus the warm-up step: the ring is full and has turned over once
        load = os.getloadavg()[0]
        r = _run_arm("ours", _argv(args.models[0], args.new_tokens[0], rollouts, lg, args.threads))
        base = base if base is not None else r["peak_rss_mb"]
        print(f"lag {lg:>4}: peak RSS {r['peak_rss_mb']:6.0f} MB ({r['peak_rss_mb'] - base:+5.0f} MB against lag "
              f"{args.lags[0]}), checkpoint {r['checkpoint_mb']:5.0f} MB, {rollouts + 1} steps  "
              f"load {load:.2f} -> {os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["axes", "grid", "lag"])
    ap.add_argument("--axes", nargs="+", choices=list(AXES), default=list(AXES))
    ap.add_argument("--models", nargs="+", default=["micro-0.5m", "micro-3m", "micro-15m"])
    ap.add_argument("--new-tokens", nargs="+", type=int, default=[32, 64, 128])
    ap.add_argument("--rollouts", type=int, default=2, help="measured rollout batches per cell (one more warms up)")
    ap.add_argument("--lag", type=int, default=64, help="rollout_lag of the grid's runs")
    ap.add_argument("--lags", nargs="+", type=int, default=[0, 16, 32, 64, 128])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.what == "lag" and args.models == ap.get_default("models"):
        args.models = ["micro-3m"]
    if args.what == "lag" and args.new_tokens == ap.get_default("new_tokens"):
        args.new_tokens = [32]
    {"axes": axes, "grid": grid, "lag": lag}[args.what](args)


if __name__ == "__main__":
    main()
