"""Time the SFT warm start of each micro model from scratch, then the cached reload.

Goal: with the default task and SFT settings, micro-3m enters the greedy-accuracy band
(30-50%) in about 2-3 minutes on 1-2 CPU threads, and a cached warm start loads in well
under a second. Also prints greedy accuracy by number of terms at the warm start, which is
what RL groups will see.

Run: .venv/bin/python benchmarks/sft.py [--models micro-0.5m,micro-3m] [--threads 1] [--seed 0]

Measured on the 2-core CPU machine, shared with other jobs (load average 2-5), defaults
(chain sums of 2-5 one-digit terms, lr 1e-3, warmup 50, batch 32, checks every 20 steps):

    model       threads seed  steps  to band  s/step  greedy acc  reload
    micro-0.5m     1     0     180     17 s   0.10      0.300     0.02 s
    micro-0.5m     1     1     220     20 s   0.09      0.375     0.02 s
    micro-3m       1     0     200     92 s   0.46      0.360     0.02 s
    micro-3m       1     1     180    115 s   0.64      0.300     0.03 s
    micro-3m       2     0     200    115 s   0.58      0.360     0.02 s  (same weights as 1 thread)
    micro-15m      1     0     140    290 s   2.07      0.310     0.06 s

Accuracy falls with the number of terms (micro-3m seed 0: 0.53, 0.48, 0.25, 0.20 for 2-5
terms) while the response grows from 16 to 39 characters.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.config import RunConfig  # noqa: E402
from workbench.models.policy import param_count  # noqa: E402
from workbench.train.sft import greedy_responses, warm_start  # noqa: E402
from workbench.tasks import build_task, last_boxed  # noqa: E402


def by_terms(model, tokenizer, problems) -> dict[int, tuple[float, float]]:
    """terms -> (greedy accuracy, mean response length in characters)."""
    responses = greedy_responses(model, tokenizer, [p.prompt for p in problems], max_new_tokens=96)
    groups: dict[int, list[tuple[bool, int]]] = defaultdict(list)
    for p, r in zip(problems, responses):
        groups[p.prompt.count("+") + 1].append((last_boxed(r) == p.answer, len(r)))
    return {n: (sum(c for c, _ in g) / len(g), sum(l for _, l in g) / len(g)) for n, g in sorted(groups.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="micro-0.5m,micro-3m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {args.threads}; task and SFT settings: defaults of RunConfig")
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for name in args.models.split(","):
            cfg = RunConfig(seed=args.seed, model={"name": name, "device": "cpu"}, sft={"cache_dir": cache})
            model, tok, info = warm_start(cfg, log=lambda s: print("  " + s, flush=True))
            start = time.perf_counter()
            warm_start(cfg, log=lambda s: None)
            reload_s = time.perf_counter() - start
            rows.append((name, param_count(model), info, reload_s))
            for n, (acc, length) in by_terms(model, tok, build_task(cfg.task).eval_set()).items():
                print(f"  {name} {n} terms: greedy accuracy {acc:.2f}, response length {length:.1f} chars")
    print(f"\n{'model':<11} {'params':>8} {'steps':>6} {'to band s':>9} {'s/step':>7} {'accuracy':>8} {'in band':>7} {'reload s':>8}")
    for name, params, info, reload_s in rows:
        print(
            f"{name:<11} {params / 1e6:>7.2f}M {info['steps']:>6} {info['seconds']:>9.1f} {info['seconds'] / info['steps']:>7.3f}"
            f" {info['accuracy']:>8.3f} {str(info['in_band']):>7} {reload_s:>8.3f}"
        )


if __name__ == "__main__":
    main()
