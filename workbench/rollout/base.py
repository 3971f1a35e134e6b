"""The one small interface every rollout backend implements.

A backend turns prompts into sampled responses. The trainer owns the policy and its
snapshots; it pushes the weights a rollout should come from with `sync_weights` before
calling `generate`, so a backend never decides which policy it samples from. Sampling
log-probs (asked for with `Sampling.logprobs`) are the log-probs of the distribution each
token was drawn from. A backend sets `Rollouts.exact_logp` when they are the trainer's own
`old_logp` up to float rounding (same module, same float32 log_softmax of logits / T, no other
logit transform); the trainer then skips its second forward pass. Otherwise (an engine's
kernels and precision, top-p) they serve only as diagnostics (`rollout/logp_mismatch_*`) and
the trainer recomputes `old_logp`: that difference alone would move r away from 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

import torch


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    seed: int | None = None
    logprobs: bool = False  # return each sampled token's log-prob (Rollouts.sampling_logp)


@dataclass
class Rollouts:
    """Responses for `len(prompts) * n` samples, grouped: sample i answers prompt i // n."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # generated ids, eos included when emitted, no padding
    finish_reasons: list[str]  # "stop" (eos) or "length" (hit max_new_tokens)
    sampling_logp: list[list[float]] | None = None  # per response token, from the engine
    n: int = 1
    exact_logp: bool = False  # sampling_logp equals the trainer's old_logp up to float rounding

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def group_index(self) -> list[int]:
        return [i // self.n for i in range(len(self))]


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of prompts, the same way for every backend.

    Chat-template text already holds the model's special tokens; raw prompts (micro models,
    models without a template) need the tokenizer's own, e.g. the <bos> that SFT trained with.
    """
    special = not getattr(tokenizer, "chat_template", None)
    return [tokenizer(p, add_special_tokens=special)["input_ids"] for p in prompts]


class RolloutBackend(Protocol):
    def generate(self, prompts: list[str], n: int, sampling: Sampling) -> Rollouts: ...

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...

    def close(self) -> None: ...
