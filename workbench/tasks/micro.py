"""Chain sums: the built-in micro-math task with a worked scratchpad of variable length.

A problem `3+7+5=` is solved as `3+7=10;10+5=15;\\boxed{15}`: one step per added term, so
the response grows with the number of terms. Response length, repetition and truncation
are then real signals for RL, which a fixed-length `a+b=` answer could never show.

Held-out problems come from their own seed namespace and the train stream never emits a
prompt that is in the held-out set, so eval accuracy measures generalisation, not recall.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from workbench.config import TaskConfig

BOXED = "\\boxed{"

# A stream redraws prompts that are in the held-out set; this many misses in a row means the
# problem space is too small to hold out eval_size problems.
_MAX_REDRAWS = 1000


@dataclass(frozen=True)
class Problem:
    prompt: str  # what the policy sees (micro: `3+7+5=`; benchmarks: the question)
    answer: str  # gold final answer, compared to the content of the last \boxed{}
    solution: str  # worked solution ending in \boxed{answer}; "" when a benchmark has none


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` in `text` (nested braces kept), None if there is none.

    >>> last_boxed("3+7=10;\\\\boxed{10}")
    '10'
    >>> last_boxed("\\\\boxed{\\\\frac{1}{2}} and \\\\boxed{3") is None
    True
    """
    start = text.rfind(BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(BOXED)
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def chain_sum_solution(terms: list[int]) -> str:
    """Scratchpad `a+b=s1;s1+c=s2;...;\\boxed{total}`, one step per term after the first."""
    steps, total = [], terms[0]
    for t in terms[1:]:
        steps.append(f"{total}+{t}={total + t};")
        total += t
    return "".join(steps) + f"{BOXED}{total}}}"


class ChainSumTask:
    """Seeded train stream and fixed held-out set of chain sums, shaped by a TaskConfig."""

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self._lo = 0 if cfg.digits == 1 else 10 ** (cfg.digits - 1)
        self._hi = 10**cfg.digits - 1
        rng = random.Random(f"chain_sum/eval/{cfg.eval_seed}")
        self._eval = [self._draw(rng) for _ in range(cfg.eval_size)]
        self._held_out = {p.prompt for p in self._eval}

    def _draw(self, rng: random.Random) -> Problem:
        n = rng.randint(self.cfg.min_terms, self.cfg.max_terms)
        terms = [rng.randint(self._lo, self._hi) for _ in range(n)]
        return Problem(prompt="+".join(map(str, terms)) + "=", answer=str(sum(terms)), solution=chain_sum_solution(terms))

    @staticmethod
    def train_rng(seed: int) -> random.Random:
        """The train stream's generator for `seed`; a namespace apart from the eval seed's."""
        return random.Random(f"chain_sum/train/{seed}")

    def train_batch(self, rng: random.Random | int, n: int) -> list[Problem]:
        """Next `n` training problems from `rng` (a seed starts a fresh stream), never held-out ones."""
        if isinstance(rng, int):
            rng = self.train_rng(rng)
        out: list[Problem] = []
        while len(out) < n:
            for _ in range(_MAX_REDRAWS):
                p = self._draw(rng)
                if p.prompt not in self._held_out:
                    out.append(p)
                    break
            else:
                raise ValueError(
                    f"task too small: {_MAX_REDRAWS} draws in a row were held-out problems; "
                    f"lower task.eval_size ({self.cfg.eval_size}) or widen terms/digits"
                )
        return out

    def eval_set(self) -> list[Problem]:
        """The fixed held-out problems (from task.eval_seed), the same on every call."""
        return list(self._eval)


def build_task(cfg: TaskConfig):
    """The task named by cfg: chain sums, or training problems drawn from a data set."""
    if cfg.name == "dataset":
        from workbench.tasks.dataset import DatasetTask

        return DatasetTask(cfg)
    if cfg.name != "chain_sum":  # TaskConfig's Literal already guards this
        raise ValueError(f"unknown task {cfg.name!r}; valid: chain_sum, dataset")
    return ChainSumTask(cfg)
