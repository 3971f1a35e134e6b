"""Time of each objective per minibatch: loss + metrics + aggregate + backward.

Run (repo root): .venv/bin/python -m benchmarks.objectives [--batch 64] [--length 1024] [--device cpu]
Prints milliseconds per call (median of repeats), and regime_metrics on its own.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from workbench.core.objectives import aggregate, get_objective, get_spec, list_objectives
from workbench.core.regimes import regime_metrics


def median_ms(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    B, T, dev = args.batch, args.length, args.device

    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(B, T, generator=g) * 4).to(dev)
    old_logp = logp + torch.randn(B, T, generator=g).to(dev) * 0.1
    adv = torch.randn(B, generator=g).to(dev)
    mask = (torch.arange(T)[None] < torch.randint(1, T + 1, (B,), generator=g)[:, None]).float().to(dev)
    entropy = torch.rand(B, T, generator=g).to(dev)

    print(f"B={B} T={T} device={dev} torch={torch.__version__} threads={torch.get_num_threads()}")
    ratio = torch.exp(logp - old_logp)
    metrics_ms = median_ms(lambda: regime_metrics(ratio, ratio.clamp(0.8, 1.2), ratio > 1.2, adv[:, None].expand(B, T), mask, entropy), dev, args.repeats)
    print(f"{'regime_metrics alone':<22}{metrics_ms:8.2f} ms")
    for name in list_objectives():
        fn, mode = get_objective(name), get_spec(name).aggregation

        def step():
            x = logp.clone().requires_grad_(True)
            loss, _ = fn(x, old_logp, adv, mask, entropy=entropy)
            aggregate(loss, mask, mode).backward()

        print(f"{name:<22}{median_ms(step, dev, args.repeats):8.2f} ms  (loss + metrics + {mode} + backward)")


if __name__ == "__main__":
    main()
