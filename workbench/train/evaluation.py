"""Held-out accuracy: avg@k (mean correctness over k samples per problem) and pass@k.

avg@k is the number the papers report (AIME'24 "avg@16" and the like); pass@k is the
share of problems with at least one correct sample among the k.
"""

from __future__ import annotations

import math
from statistics import fmean, stdev
from typing import Callable

from workbench.names import eval_key, pass_at
from workbench.rollout.base import RolloutBackend, Sampling


def evaluate(backend: RolloutBackend, tokenizer, problems, *, benchmark: str, k: int, temperature: float,
             max_new_tokens: int, score: Callable[[list[str], list[str]], list[float]],
             prompt_of: Callable[[str], str]) -> dict[str, float]:
    """Sample k responses per problem and score them; keys `eval/<benchmark>/accuracy|accuracy_se|pass_at_<k>`
    (the benchmark name made key-safe by `names.benchmark_key`)."""
    if not problems:
        raise ValueError(f"benchmark {benchmark!r} has no problems")
    rollouts = backend.generate([prompt_of(p.prompt) for p in problems], k,
                                Sampling(temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens))
    texts = tokenizer.batch_decode(rollouts.response_ids, skip_special_tokens=True)
    golds = [p.answer for p in problems for _ in range(k)]
    correct = [r > 0.5 for r in score(texts, golds)]
    per_problem = [correct[i * k:(i + 1) * k] for i in range(len(problems))]
    means = [fmean(c) for c in per_problem]
    # Standard error of avg@k over problems: the noise band a report draws around accuracy.
    se = stdev(means) / math.sqrt(len(means)) if len(means) > 1 else math.nan
    return {
        eval_key(benchmark, "accuracy"): fmean(means),
        eval_key(benchmark, "accuracy_se"): se,
        eval_key(benchmark, pass_at(k)): fmean(any(c) for c in per_problem),
    }
