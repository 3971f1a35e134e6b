"""Rollouts with transformers' `generate` (KV cache), on CPU or GPU.

The backend samples from whatever module it was given; the trainer hands it the policy
snapshot the rollout must come from (see `sync_weights`). Sampling log-probs are not
returned: the trainer recomputes `old_logp` with the very same module, so there is no
engine/trainer mismatch to report on this backend.
"""

from __future__ import annotations

from typing import Iterable

import torch

from workbench.rollout.base import Rollouts, Sampling, encode_prompts


class HFBackend:
    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device | str = "cpu", chunk_size: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.chunk_size = chunk_size  # sequences per generate call, bounds activation + KV memory

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, sampling: Sampling) -> Rollouts:
        tok = self.tokenizer
        prompt_ids = encode_prompts(tok, prompts)
        expanded = [ids for ids in prompt_ids for _ in range(n)]
        responses: list[list[int]] = []
        reasons: list[str] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(expanded), self.chunk_size):
                chunk = expanded[start:start + self.chunk_size]
                r, f = self._generate_chunk(chunk, sampling)
                responses += r
                reasons += f
        finally:
            self.model.train(was_training)
        return Rollouts(prompt_ids=expanded, response_ids=responses, finish_reasons=reasons, sampling_logp=None, n=n)

    def _generate_chunk(self, chunk: list[list[int]], sampling: Sampling) -> tuple[list[list[int]], list[str]]:
        tok = self.tokenizer
        width = max(len(c) for c in chunk)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(c)) + c for c in chunk], device=self.device)
        attention = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk], device=self.device)
        greedy = sampling.temperature == 0
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else 0,  # transformers defaults to top-k 50; sample the full distribution
            pad_token_id=pad,
            eos_token_id=tok.eos_token_id,
        )
        gen = out[:, width:].tolist()
        responses, reasons = [], []
        for row in gen:
            if tok.eos_token_id in row:
                cut = row.index(tok.eos_token_id) + 1
                responses.append(row[:cut])
                reasons.append("stop")
            else:
                responses.append(row)
                reasons.append("length")
        return responses, reasons

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        state = dict(named_tensors)
        if state:
            self.model.load_state_dict(state, strict=False)

    def sleep(self) -> None:  # nothing to free: the module is the trainer's
        pass

    def wake(self) -> None:
        pass

    def close(self) -> None:
        pass
