"""Rollouts -> padded tensors, and per-token log-probs / entropy of responses under a model.

Prompts are left-padded to a common width so every response starts in the same column;
responses are right-padded. Log-probs are taken at the sampling temperature
(log_softmax(logits / T)), the distribution the tokens were actually drawn from.

Forward passes compute no padding where the model allows it: the rows of a minibatch are
packed end to end into one sequence, positions restarting at 0 for each, and transformers
builds a block-diagonal causal mask from those positions (`layout="packed"`, Qwen2-family
models). Other models get the rows cut to their longest prompt and response
(`layout="trimmed"`). Either way the outputs are padded back to the rollout batch's width,
so callers, aggregation constants included, see the same shapes as the padded forward.
The no-gradient pass over a whole rollout batch goes in chunks of similar length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.core.regimes import token_entropy


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (B, P + T) left-padded prompt then right-padded response
    attention_mask: torch.Tensor  # (B, P + T)
    position_ids: torch.Tensor  # (B, P + T)
    response_ids: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T) float, 1 on response tokens
    prompt_width: int

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, idx: torch.Tensor) -> "PackedBatch":
        return PackedBatch(self.input_ids[idx], self.attention_mask[idx], self.position_ids[idx],
                           self.response_ids[idx], self.mask[idx], self.prompt_width)


def trim(batch: PackedBatch) -> PackedBatch:
    """The same rows without the columns that are padding in every row.

    Left: prompt columns before the longest prompt; right: response columns after the longest
    response. Positions come with the rows, so every kept token sees the same inputs.
    """
    P = batch.prompt_width
    prompt_len = int(batch.attention_mask[:, :P].sum(dim=1).max().item()) if len(batch) else 0
    T = max(int(batch.mask.sum(dim=1).max().item()) if len(batch) else 0, 1)
    start, end = P - max(prompt_len, 1), P + T
    return PackedBatch(batch.input_ids[:, start:end], batch.attention_mask[:, start:end],
                       batch.position_ids[:, start:end], batch.response_ids[:, :T], batch.mask[:, :T], P - start)


def pack(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int, device: torch.device) -> PackedBatch:
    P = max(len(p) for p in prompt_ids)
    T = max(max((len(r) for r in response_ids), default=1), 1)
    rows, attn, resp, mask = [], [], [], []
    for p, r in zip(prompt_ids, response_ids):
        rows.append([pad_id] * (P - len(p)) + p + r + [pad_id] * (T - len(r)))
        attn.append([0] * (P - len(p)) + [1] * (len(p) + len(r)) + [0] * (T - len(r)))
        resp.append(r + [pad_id] * (T - len(r)))
        mask.append([1.0] * len(r) + [0.0] * (T - len(r)))
    attention = torch.tensor(attn, device=device)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return PackedBatch(torch.tensor(rows, device=device), attention, positions,
                       torch.tensor(resp, device=device), torch.tensor(mask, device=device), P)


# Model types whose transformers implementation reads packed sequences from position_ids
# (masking_utils.find_packed_sequence_indices); tests/test_batching.py checks them against padding.
PACKABLE = {"qwen2"}
LAYOUTS = ("auto", "packed", "trimmed", "padded")


def response_logp(model: torch.nn.Module, batch: PackedBatch, temperature: float,
                  with_entropy: bool = False, layout: str = "auto") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) log-probs of the response tokens, and (B, T) entropy (detached) if asked for.

    `layout`: "padded" runs the batch as given; "trimmed" cuts it to its rows' columns first;
    "packed" runs all rows as one sequence; "auto" packs where the model allows, else trims.
    Padding positions of the outputs are 0 in every layout.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "auto":
        layout = "packed" if getattr(getattr(model, "config", None), "model_type", None) in PACKABLE else "trimmed"
    if layout == "packed":
        return _packed_logp(model, batch, temperature, with_entropy)
    if layout == "trimmed":
        width = batch.response_ids.shape[1]
        logp, ent = response_logp(model, trim(batch), temperature, with_entropy, layout="padded")
        pad = (0, width - logp.shape[1])
        return torch.nn.functional.pad(logp, pad), None if ent is None else torch.nn.functional.pad(ent, pad)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids, use_cache=False)
    T = batch.response_ids.shape[1]
    # logits at position j predict token j + 1: the response's first token comes from the prompt's last column.
    logits = out.logits[:, batch.prompt_width - 1: batch.prompt_width - 1 + T].float() / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    ent = None
    if with_entropy:
        with torch.no_grad():
            ent = token_entropy(logits.detach(), 1.0)
    return logp * batch.mask, ent


def _packed_logp(model, batch: PackedBatch, temperature: float, with_entropy: bool):
    """All rows as one sequence without padding; logits gathered back to (B, T)."""
    P = batch.prompt_width
    prompt_lens = batch.attention_mask[:, :P].sum(dim=1).tolist()
    resp_lens = batch.mask.sum(dim=1).long().tolist()
    ids, pos, at, rows, cols = [], [], [], [], []
    offset = 0
    for i, (p, r) in enumerate(zip(prompt_lens, resp_lens)):
        ids += [batch.input_ids[i, P - p:P], batch.response_ids[i, :r]]
        pos.append(torch.arange(p + r, device=batch.input_ids.device))
        # logits at position j predict token j + 1: the first response token comes from the last prompt token.
        at.append(torch.arange(offset + p - 1, offset + p - 1 + r, device=batch.input_ids.device))
        rows += [i] * r
        cols += range(r)
        offset += p + r
    out = model(input_ids=torch.cat(ids)[None], position_ids=torch.cat(pos)[None], use_cache=False)
    at_t = torch.cat(at)
    logits = out.logits[0, at_t].float() / temperature  # (N, V), one row per response token
    where = (torch.tensor(rows, dtype=torch.long, device=logits.device),
             torch.tensor(cols, dtype=torch.long, device=logits.device))
    lp = torch.log_softmax(logits, dim=-1).gather(-1, batch.response_ids[where].unsqueeze(-1)).squeeze(-1)
    logp = torch.zeros(batch.mask.shape, dtype=lp.dtype, device=lp.device).index_put(where, lp)
    ent = None
    if with_entropy:
        with torch.no_grad():
            ent = torch.zeros_like(logp).index_put(where, token_entropy(logits.detach()[None], 1.0)[0])
    return logp, ent


@torch.no_grad()
def response_logp_chunked(model: torch.nn.Module, batch: PackedBatch, temperature: float, chunk: int = 32) -> torch.Tensor:
    """Log-probs without gradient for a whole rollout batch, in chunks to bound memory.

    Rows go through the model sorted by length, so each chunk, trimmed, is nearly padding-free
    width; the result is put back in the batch's row order.
    """
    order = torch.argsort(batch.attention_mask.sum(dim=1), stable=True)
    out = torch.zeros(batch.mask.shape, dtype=torch.float32, device=batch.mask.device)
    for i in range(0, len(batch), chunk):
        idx = order[i:i + chunk]
        out[idx] = response_logp(model, batch.select(idx), temperature, layout="trimmed")[0]
    return out
