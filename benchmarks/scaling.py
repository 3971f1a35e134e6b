"""How a dispo-wb step scales with model size and response length, and its memory with rollout_lag.

    python benchmarks/scaling.py grid                 # micro-0.5m/3m/15m x 32/64/128 new tokens
    python benchmarks/scaling.py grid --models micro-3m --new-tokens 32 64 --rollouts 3
    python benchmarks/scaling.py lag                  # micro-3m, peak RSS at rollout_lag 0/16/32/64/128

Every cell is one training run in its own process (the `ours` arm of `benchmarks/vs_trl.py`:
16 prompts x 8 samples, 16 AdamW steps per rollout batch, old log-probs recomputed), one
warm-up step then `--rollouts` measured steps, medians of the measured ones. The models are
freshly initialised (no SFT warm start): such a model samples nearly uniformly from the
31-character vocabulary, so <eos> comes with probability ~1/31 per token and the mean response
length ("len") grows less than the cap "new" (about 21, 28 and 31 tokens at 32, 64 and 128).
The load average is printed with each cell; compare cells from one invocation only.

`lag` runs enough rollout batches for the snapshot ring to fill (lag / 16 + 2) and prints the
process's peak RSS and the end-of-run checkpoint, so the growth per 16 steps of lag can be read
off (one full copy of the weights per 16 steps of lag).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_trl import PHASES, _run_arm  # noqa: E402 - the arm and its subprocess runner are shared


def _argv(model: str, new_tokens: int, rollouts: int, lag: int, threads: int) -> list[str]:
    return ["--model", model, "--new-tokens", str(new_tokens), "--rollouts", str(rollouts), "--lag", str(lag),
            "--threads", str(threads), "--no-sft"]


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
    ap.add_argument("what", choices=["grid", "lag"])
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
    (grid if args.what == "grid" else lag)(args)


if __name__ == "__main__":
    main()
