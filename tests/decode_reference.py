"""The HF backend's decode loop as it was before the pre-allocated KV cache (commit d427fa9), frozen.

The new loop (workbench/rollout/hf.py) must give the same tokens, finish reasons and log-probs as
this one for the same seed, to float rounding: `tests/test_rollout_hf.py` compares them and
`benchmarks/decode.py` times them against each other. This copy grows transformers'
`DynamicCache` by concatenation every step and drops a finished row from the batch and the
cache at the step it ends.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache

from workbench.rollout.base import Rollouts, Sampling, encode_prompts
from workbench.rollout.hf import logits_warpers


@torch.no_grad()
def reference_generate(model, tokenizer, prompts: list[str], n: int, sampling: Sampling) -> Rollouts:
    """`HFBackend(model, tokenizer).generate(prompts, n, sampling)` with the previous loop, one chunk."""
    expanded = [ids for ids in encode_prompts(tokenizer, prompts) for _ in range(n)]
    was_training = model.training
    model.eval()
    try:
        responses, reasons, logps = reference_decode_chunk(model, tokenizer, expanded, sampling, torch.device("cpu"))
    finally:
        model.train(was_training)
    exact = sampling.logprobs and sampling.temperature > 0 and sampling.top_p >= 1.0
    return Rollouts(prompt_ids=expanded, response_ids=responses, finish_reasons=reasons,
                    sampling_logp=logps if sampling.logprobs else None, n=n, exact_logp=exact)


def reference_decode_chunk(model, tok, chunk: list[list[int]], sampling: Sampling, device: torch.device
                           ) -> tuple[list[list[int]], list[str], list[list[float]]]:
    width = max(len(c) for c in chunk)
    pad, eos = tok.pad_token_id, tok.eos_token_id
    ids = torch.tensor([[pad] * (width - len(c)) + c for c in chunk], device=device)
    attention = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk], device=device)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    greedy = sampling.temperature == 0
    warp = logits_warpers(sampling)
    responses: list[list[int]] = [[] for _ in chunk]
    logps: list[list[float]] = [[] for _ in chunk]
    alive = torch.arange(len(chunk), device=device)  # chunk row of each batch row still decoding
    cache = DynamicCache(config=getattr(model, "config", None))
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    for t in range(sampling.max_new_tokens):
        out = model(input_ids=ids, attention_mask=attention, position_ids=positions,
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
