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
`generate`: sequences that have emitted <eos> leave the batch (their rows of the cache are
dropped) once they are `COMPACT_AT` of it, where `generate` keeps decoding every finished row as
padding until the longest one ends (with responses of mean length ~19 out of 32 that padding is
about 40% of the positions). Until then a finished row is decoded as padding and never sampled:
only the rows still decoding are drawn, in batch order, so the draws and the random numbers they
use are those of a batch holding just those rows, and a seed fixes the same rollout whatever the
threshold. Tokens are drawn the way `generate` draws them (temperature, then top-p, then one
multinomial draw per row; argmax at temperature 0); `decode="generate"` keeps the transformers
call. For a plain float32 Qwen2 model (the micro models) the one-token steps after the prompt go
through `Qwen2Step`, the same computation without the module stack's fixed cost per step.

A KV cache written in place into buffers allocated once per chunk, instead of the concatenating
`DynamicCache`, was measured slower on CPU and dropped (commit 6b832d2; docs/performance.md).
"""

from __future__ import annotations

import inspect
from typing import Iterable

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from workbench.rollout.base import Rollouts, Sampling, encode_prompts
from workbench.rollout.qwen2_step import Qwen2Step


# Share of the batch's rows that must have ended before they are dropped from the batch and the
# cache; until then a finished row is decoded as padding and its output is never read. 0 drops a
# row at the step it ends (the loop before issue 22); 0.25 was fastest of 0 / 0.25 / 0.5 measured.
COMPACT_AT = 0.25
# One-token steps of a plain float32 Qwen2 model through Qwen2Step instead of the module (see there).
FAST_STEP = True


def logits_warpers(sampling: Sampling) -> LogitsProcessorList:
    """transformers' warpers for the sampling: temperature, then top-p (none for greedy decoding)."""
    warp = LogitsProcessorList()
    if sampling.temperature != 0 and sampling.temperature != 1.0:
        warp.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.temperature != 0 and sampling.top_p < 1.0:
        warp.append(TopPLogitsWarper(sampling.top_p))
    return warp


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
        dev = self.device
        width = max(len(c) for c in chunk)
        pad, eos = tok.pad_token_id, tok.eos_token_id
        steps = sampling.max_new_tokens
        ids = torch.tensor([[pad] * (width - len(c)) + c for c in chunk], device=dev)
        # The attention mask of every position a row can reach, built once: prompt padding 0, the rest 1.
        attention = torch.ones(len(chunk), width + steps, dtype=torch.long, device=dev)
        attention[:, :width] = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk], device=dev)
        positions = (attention[:, :width].cumsum(dim=1) - 1).clamp(min=0)
        greedy = sampling.temperature == 0
        warp = logits_warpers(sampling)
        tokens = torch.full((len(chunk), steps), pad, dtype=torch.long, device=dev)
        logps = torch.zeros(len(chunk), steps, device=dev) if sampling.logprobs else None
        lengths = torch.full((len(chunk),), steps, dtype=torch.long, device=dev)
        row_of = torch.arange(len(chunk), device=dev)  # chunk row of each batch row
        live = torch.ones(len(chunk), dtype=torch.bool, device=dev)  # batch rows still decoding
        n_live = len(chunk)
        cache = DynamicCache(config=getattr(self.model, "config", None))
        cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        step = Qwen2Step.build(self.model, width + steps) if FAST_STEP else None
        padded = any(len(c) < width for c in chunk)
        for t in range(steps):
            if t == 0 or step is None:
                out = self.model(input_ids=ids, attention_mask=attention[:, :width + t], position_ids=positions,
                                 use_cache=True, logits_to_keep=1, **{cache_arg: cache})
                logits = out.logits[:, -1].float()
            else:
                mask = attention[:, None, None, :width + t].bool() if padded else None
                logits = step(ids[:, 0], positions[:, 0], cache, mask).float()
            # Only the rows still decoding are sampled, in batch order: the same draws from the same random
            # numbers as a batch that holds just these rows, i.e. as when a finished row left it at once.
            idx = None if n_live == len(row_of) else live.nonzero().squeeze(1)
            if idx is not None:
                logits = logits[idx]
            if greedy:
                nxt = logits.argmax(dim=-1)
                scores = logits
            else:
                scores = warp(ids if idx is None else ids[idx], logits)
                nxt = torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)
            rows = row_of if idx is None else row_of[idx]
            tokens[rows, t] = nxt
            if logps is not None:
                # The trainer's logp: log_softmax of the same float32 logits / T (batching.response_logp).
                logps[rows, t] = torch.log_softmax(scores, dim=-1).gather(-1, nxt.unsqueeze(1)).squeeze(1)
            ended = nxt == eos
            n_end = int(ended.sum())
            if n_end:
                lengths[rows[ended]] = t + 1
                live[(torch.arange(len(row_of), device=dev) if idx is None else idx)[ended]] = False
                n_live -= n_end
            if t == steps - 1 or n_live == 0:
                break
            if idx is None:
                ids = nxt.unsqueeze(1)
            else:  # a finished row is fed padding; what it computes is never read
                ids = torch.full((len(row_of), 1), pad, dtype=torch.long, device=dev)
                ids[idx, 0] = nxt
            n_done = len(row_of) - n_live
            if n_done and n_done >= COMPACT_AT * len(row_of):  # enough rows ended: drop them from batch and cache
                keep = live.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                row_of, ids, live = row_of[keep], ids[keep], live[keep]
                attention, positions = attention[keep], positions[keep]
            positions = positions[:, -1:] + 1
        lengths = lengths.tolist()
        responses = [row[:n] for row, n in zip(tokens.tolist(), lengths)]
        lp = [row[:n] for row, n in zip(logps.tolist(), lengths)] if logps is not None else [[] for _ in chunk]
        reasons = ["stop" if r and r[-1] == eos else "length" for r in responses]
        return responses, reasons, lp

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
