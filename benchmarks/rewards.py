"""How long RewardPool.score takes per training step, on 1 and 2 workers.

Prints the median over repeats of one score() call on a warm pool (workers started) for
  - 128 micro answers, all distinct and never seen (cold memo: every answer goes to a worker),
  - the same 128 again (warm memo: answered in the parent),
  - 128 micro answers as a step has them, 16 prompts x 8 samples with repeats (a new step; the
    memo holds earlier steps, as in training),
  - 128 long answers of about 4k tokens each (cold memo),
plus the pool's start-up time and one call in which a single answer hangs.

Run from the repository root: .venv/bin/python -m benchmarks.rewards [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from workbench.tasks.rewards import RewardPool

BATCH = 128


def micro_answer(rng: random.Random) -> tuple[str, str]:
    """One chain-sum scratchpad like the micro task's, right about half the time."""
    terms = [rng.randint(0, 9) for _ in range(rng.randint(2, 5))]
    lines, total = [], terms[0]
    for t in terms[1:]:
        lines.append(f"{total}+{t}={total + t}")
        total += t
    answer = total if rng.random() < 0.5 else total + rng.randint(1, 3)
    return ";".join(lines) + f";\\boxed{{{answer}}}", str(total)


def micro_step(rng: random.Random, prompts: int = 16, samples: int = 8) -> tuple[list[str], list[str]]:
    """A step's batch: each prompt's samples repeat a few distinct answers, as a small policy does."""
    responses, golds = [], []
    for _ in range(prompts):
        variants = [micro_answer(rng) for _ in range(3)]
        gold = variants[0][1]
        for _ in range(samples):
            responses.append(rng.choice(variants)[0])
            golds.append(gold)
    return responses, golds


def long_answer(rng: random.Random, chars: int = 16_000) -> tuple[str, str]:
    """About 4k tokens of worked text with inline LaTeX, ending in a boxed fraction."""
    parts = []
    while sum(map(len, parts)) < chars:
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        parts.append(
            f"Next we simplify $\\frac{{{a * c}}}{{{b * c}}}$, which gives $\\frac{{{a}}}{{{b}}}$ "
            f"after dividing by {c}; adding {a} and {b} gives {a + b}. "
        )
    p, q = rng.randint(1, 50), rng.randint(51, 99)
    return "".join(parts) + f"Therefore the answer is $\\boxed{{\\frac{{{p}}}{{{q}}}}}$.", f"{p}/{q}"


def timed(pool: RewardPool, batch: tuple[list[str], list[str]]) -> float:
    start = time.perf_counter()
    pool.score(*batch)
    return time.perf_counter() - start


def median_ms(samples: list[float]) -> str:
    return f"{1000 * statistics.median(samples):8.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(0)
    print(f"cpu cores: {os.cpu_count()}, batch: {BATCH}, repeats: {args.repeats} (median shown)")

    for workers in (1, 2):
        start = time.perf_counter()
        pool = RewardPool(workers=workers, timeout_s=2.0)
        started = time.perf_counter() - start
        with pool:
            pool.score(*zip(*[micro_answer(rng) for _ in range(8)]))  # first-call effects out of the way
            cold, warm, step, long = [], [], [], []
            seen: set[str] = set()
            for _ in range(args.repeats):
                distinct: dict[str, str] = {}
                while len(distinct) < BATCH:
                    response, gold = micro_answer(rng)
                    if response not in seen:
                        seen.add(response)
                        distinct[response] = gold
                batch = (list(distinct), list(distinct.values()))
                cold.append(timed(pool, batch))
                warm.append(timed(pool, batch))
                step.append(timed(pool, micro_step(rng)))
                long.append(timed(pool, tuple(map(list, zip(*[long_answer(rng) for _ in range(BATCH)])))))
            responses, golds = map(list, zip(*[micro_answer(rng) for _ in range(BATCH - 1)]))
            hang = timed(pool, (responses + [r"\boxed{5^{5^{5^{5}}}}"], golds + ["1"]))

        print(f"\nworkers={workers}  (pool start {1000 * started:.0f} ms; the first includes the fork server)")
        print(f"  128 micro, all new (cold memo)        {median_ms(cold)}")
        print(f"  128 micro, all seen (warm memo)       {median_ms(warm)}")
        print(f"  128 micro, 16 prompts x 8 (new step)  {median_ms(step)}")
        print(f"  128 long (~4k tokens, cold memo)      {median_ms(long)}")
        print(f"  128 micro with one hang, limit 2 s    {1000 * hang:8.1f} ms (one run)")


if __name__ == "__main__":
    main()
