"""Rollouts with transformers' `generate` (KV cache), on CPU or GPU.

The backend samples from whatever module it was given; the trainer hands it the policy
snapshot the rollout must come from (see `sync_weights`). Asked for (`Sampling.logprobs`),
the decode loop returns each sampled token's log-prob from the logits it sampled with. With
temperature as the only logit transform that is log_softmax(logits / T) in float32, the very
computation of the trainer's `old_logp` on the same module, so the rollout's log-probs are
marked exact (`Rollouts.exact_logp`) and the trainer needs no second forward pass; the values
differ from that pass by float rounding only (the KV-cached decode sums in another order).
Top-p changes the distribution drawn from, and `decode="generate"` returns no log-probs:
neither is exact, and the trainer recomputes.

Sampling runs its own decode loop over transformers' KV cache and logits warpers rather than
`generate`: a sequence that has emitted <eos> leaves the batch (its rows of the cache are
dropped), where `generate` keeps decoding every finished row as padding until the longest
one ends. With responses of mean length ~19 out of 32 that padding is about 40% of the
positions. Tokens are drawn the way `generate` draws them (temperature, then top-p, then one
multinomial draw per row; argmax at temperature 0), so a seed still fixes a rollout;
`decode="generate"` keeps the transformers call.
"""

from __future__ import annotations

import inspect
from typing import Iterable

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from workbench.rollout.base import Rollouts, Sampling, encode_prompts


class HFBackend:
    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device | str = "cpu", chunk_size: int = 512,
                 decode: str = "loop"):
        if decode not in ("loop", "generate"):
            raise ValueError(f"decode must be 'loop' or 'generate', got {decode!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.chunk_size = chunk_size  # sequences per generate call, bounds activation + KV memory
        self.decode = decode

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, sampling: Sampling) -> Rollouts:
        tok = self.tokenizer
        prompt_ids = encode_prompts(tok, prompts)
        expanded = [ids for ids in prompt_ids for _ in range(n)]
        responses: list[list[int]] = []
        reasons: list[str] = []
        logps: list[list[float]] | None = [] if sampling.logprobs and self.decode == "loop" else None
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(expanded), self.chunk_size):
                chunk = expanded[start:start + self.chunk_size]
                if self.decode == "loop":
                    r, f, lp = self._decode_chunk(chunk, sampling)
                    if logps is not None:
                        logps += lp
                else:
                    r, f = self._generate_chunk(chunk, sampling)
                responses += r
                reasons += f
        finally:
            self.model.train(was_training)
        exact = logps is not None and sampling.temperature > 0 and sampling.top_p >= 1.0
        return Rollouts(prompt_ids=expanded, response_ids=responses, finish_reasons=reasons, sampling_logp=logps, n=n,
                        exact_logp=exact)

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

    def _decode_chunk(self, chunk: list[list[int]], sampling: Sampling
                      ) -> tuple[list[list[int]], list[str], list[list[float]]]:
        tok = self.tokenizer
        width = max(len(c) for c in chunk)
        pad, eos = tok.pad_token_id, tok.eos_token_id
        ids = torch.tensor([[pad] * (width - len(c)) + c for c in chunk], device=self.device)
        attention = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk], device=self.device)
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
        greedy = sampling.temperature == 0
        warp = LogitsProcessorList()
        if not greedy and sampling.temperature != 1.0:
            warp.append(TemperatureLogitsWarper(sampling.temperature))
        if not greedy and sampling.top_p < 1.0:
            warp.append(TopPLogitsWarper(sampling.top_p))
        responses: list[list[int]] = [[] for _ in chunk]
        logps: list[list[float]] = [[] for _ in chunk]
        alive = torch.arange(len(chunk), device=self.device)  # chunk row of each batch row still decoding
        cache = DynamicCache(config=getattr(self.model, "config", None))
        cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        for t in range(sampling.max_new_tokens):
            out = self.model(input_ids=ids, attention_mask=attention, position_ids=positions,
                             use_cache=True, logits_to_keep=1, **{cache_arg: cache})
            logits = out.logits[:, -1].float()
            if greedy:
                nxt = logits.argmax(dim=-1)
                scores = logits
            else:
                scores = warp(ids, logits)
                nxt = torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)
            rows = alive.tolist()
            for row, token in zip(rows, nxt.tolist()):
                responses[row].append(token)
            if sampling.logprobs:
                # The trainer's logp: log_softmax of the same float32 logits / T (batching.response_logp).
                lp = torch.log_softmax(scores, dim=-1).gather(-1, nxt.unsqueeze(1)).squeeze(1)
                for row, v in zip(rows, lp.tolist()):
                    logps[row].append(v)
            going = nxt != eos
            if t == sampling.max_new_tokens - 1 or not going.any():
                break
            if not going.all():  # finished rows leave the batch and the cache
                keep = going.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                alive, nxt, attention, positions = alive[keep], nxt[keep], attention[keep], positions[keep]
            ids = nxt.unsqueeze(1)
            attention = torch.cat([attention, attention.new_ones(len(alive), 1)], dim=1)
            positions = positions[:, -1:] + 1
        reasons = ["stop" if r and r[-1] == eos else "length" for r in responses]
        return responses, reasons, logps

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
