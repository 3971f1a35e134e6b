"""Rollouts -> padded tensors, and per-token log-probs / entropy of responses under a model.

Prompts are left-padded to a common width so every response starts in the same column;
responses are right-padded. Log-probs are taken at the sampling temperature
(log_softmax(logits / T)), the distribution the tokens were actually drawn from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.regimes import token_entropy


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


def response_logp(model: torch.nn.Module, batch: PackedBatch, temperature: float,
                  with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) log-probs of the response tokens, and (B, T) entropy (detached) if asked for."""
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


@torch.no_grad()
def response_logp_chunked(model: torch.nn.Module, batch: PackedBatch, temperature: float, chunk: int = 64) -> torch.Tensor:
    """Log-probs without gradient for a whole rollout batch, in chunks to bound memory."""
    parts = [response_logp(model, batch.select(torch.arange(i, min(i + chunk, len(batch)))), temperature)[0]
             for i in range(0, len(batch), chunk)]
    return torch.cat(parts)
