"""What TRL trains on: our task's problems as a `datasets.Dataset`, scored by our reward.

Rows hold `prompt` (what the policy sees, as the local trainer builds it) and `answer` (the
gold, for the reward). The chain-sum task yields `steps * prompts_per_step` problems from
its seeded train stream (held-out problems excluded, as locally); a data-set task (a
benchmark name or a `file:` spec) gives all its problems, which TRL shuffles and repeats.
"""

from __future__ import annotations

import functools
from typing import Any

from workbench.config import RunConfig
from workbench.metrics.responses import repetition_rate
from workbench.names import (LENGTH_CORRECT, LENGTH_INCORRECT, REPETITION_RATE, REWARD_CRASH_FRAC, REWARD_TIMEOUT_FRAC,
                             TRAIN_ACCURACY)
from workbench.models.policy import INSTRUCTION, is_micro
from workbench.tasks.rewards import RewardPool, score_answer
from workbench.tasks.micro import build_task


def prompt_of(question: str, micro: bool, chat: bool) -> Any:
    """Micro models see the raw problem; chat models a user turn that TRL renders with their template."""
    if micro:
        return question
    content = f"{question}\n\n{INSTRUCTION}"
    return [{"role": "user", "content": content}] if chat else f"{content}\n"


def build_dataset(cfg: RunConfig, *, chat: bool):
    """The training rows for `cfg` as a `datasets.Dataset` with columns prompt and answer."""
    from datasets import Dataset

    task = build_task(cfg.task)
    if cfg.task.name == "chain_sum":
        problems = task.train_batch(task.train_rng(cfg.seed), cfg.steps * cfg.rollout.prompts_per_step)
    else:
        problems = task.problems
    micro = is_micro(cfg.model.name)
    return Dataset.from_list([{"prompt": prompt_of(p.prompt, micro, chat), "answer": p.answer} for p in problems])


def completion_text(completion: Any) -> str:
    """A completion as text: TRL passes strings, or message lists for conversational prompts."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if isinstance(m.get("content"), str))


class MathReward:
    """TRL reward function: 1 correct / 0 wrong by `workbench.tasks.rewards`, in worker processes with hard timeouts.

    Also reports, per response, what the local trainer logs about a rollout batch
    (`train/accuracy`, `response/length_correct`, `response/length_incorrect`,
    `response/repetition_rate`, `reward/timeout_frac`, `reward/crash_frac`) through TRL's
    `log_metric`, which sums values and counts over every process: the means span all ranks.
    """

    __name__ = "math_verify"

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self._pool: RewardPool | None = None

    def _scorer(self) -> RewardPool:
        if self._pool is None:
            scorer = functools.partial(score_answer, require_boxed=self.cfg.reward_require_boxed)
            self._pool = RewardPool(workers=self.cfg.reward_workers, timeout_s=self.cfg.reward_timeout_s, scorer=scorer)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __call__(self, prompts, completions, completion_ids, answer, log_metric=None, **_: Any) -> list[float]:
        texts = [completion_text(c) for c in completions]
        result = self._scorer().score(texts, list(answer))
        if log_metric is not None:
            for reward, ids, timed_out, crashed in zip(result.rewards, completion_ids, result.timed_out, result.crashed):
                log_metric(TRAIN_ACCURACY, float(reward == 1.0))
                log_metric(LENGTH_CORRECT if reward == 1.0 else LENGTH_INCORRECT, float(len(ids)))
                rep = repetition_rate(list(ids))
                if rep is not None:
                    log_metric(REPETITION_RATE, rep)
                log_metric(REWARD_TIMEOUT_FRAC, float(timed_out))
                log_metric(REWARD_CRASH_FRAC, float(crashed))
        return list(result.rewards)


class OverlongPenalty:
    """DAPO's soft overlong punishment (`workbench.core.advantages.overlong_penalty`) as a second TRL reward,
    which TRL adds to the math reward before the group advantages, as the local trainer does."""

    __name__ = "overlong_penalty"

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    def __call__(self, prompts, completions, completion_ids, **_: Any) -> list[float]:
        import torch

        from workbench.core.advantages import overlong_penalty

        o = self.cfg.overlong
        lengths = torch.tensor([len(ids) for ids in completion_ids])
        return overlong_penalty(lengths, self.cfg.rollout.max_new_tokens, o.buffer, o.factor).tolist()
