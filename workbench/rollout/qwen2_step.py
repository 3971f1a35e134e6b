"""One decode step of a Qwen2 causal LM as a plain function of its weights, for the HF decode loop.

A decode step of transformers' `Qwen2ForCausalLM` goes through ~60 module calls, their hooks and
wrappers, a mask builder and a rotary module; on CPU with a micro model and the few rows left at
the end of a rollout that fixed cost is a large part of each step. `Qwen2Step` computes the same
thing (RMSNorm in float32, q/k/v with their biases, rotary embedding, attention over the cache,
o-projection, SiLU-gated MLP, final norm, lm_head) with the q/k/v and gate/up projections fused
into one matmul each and the rotary table computed once. Its logits equal the module's to float
rounding (`tests/test_rollout_hf.py`).

It applies only where it is the same computation, on CPU (where it was measured; a GPU's decode
runs through the module): a float32 `Qwen2ForCausalLM` in eval mode with
default rotary embedding, full attention in every layer (no sliding window), SDPA or eager
attention, SiLU, and no forward hooks or pre-hooks on any of its modules (something that hooks
the model expects its forward to run). `Qwen2Step.build` returns None otherwise and the loop calls
the model. Prefill (the prompt) always goes through the model; only the one-token steps after it
come here, adding their keys and values to the loop's cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Qwen2Step:
    def __init__(self, model: torch.nn.Module, max_pos: int):
        cfg = model.config
        inner = model.model
        self.layers = []
        for layer in inner.layers:
            att, mlp = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
                torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]).t(),
                torch.cat([att.q_proj.bias, att.k_proj.bias, att.v_proj.bias]),
                att.o_proj.weight.t(),
                layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
                torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).t(),
                mlp.down_proj.weight.t(),
            ))
        first = inner.layers[0].self_attn
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, first.head_dim
        self.scaling = first.scaling
        self.intermediate = cfg.intermediate_size
        rotary = inner.rotary_emb
        # The rotary module's own arithmetic (float32 positions x inv_freq, then cos/sin x attention_scaling).
        pos = torch.arange(max_pos, device=rotary.inv_freq.device)
        freqs = pos[:, None].float() * rotary.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos() * rotary.attention_scaling, emb.sin() * rotary.attention_scaling
        self.embed = inner.embed_tokens.weight
        self.norm = (inner.norm.weight, inner.norm.variance_epsilon)
        self.lm_head = model.lm_head.weight.t()

    @staticmethod
    def build(model: torch.nn.Module, max_pos: int) -> "Qwen2Step | None":
        """A step function for `model`, or None where it would not be the model's own computation."""
        from transformers import Qwen2ForCausalLM

        if type(model) is not Qwen2ForCausalLM or model.training:
            return None
        if model.device.type != "cpu":  # measured and tested on CPU only
            return None
        cfg = model.config
        if (cfg.rope_parameters or {}).get("rope_type", "default") != "default":
            return None
        if any(t != "full_attention" for t in cfg.layer_types) or cfg.hidden_act != "silu":
            return None
        if cfg._attn_implementation not in ("sdpa", "eager") or max_pos > cfg.max_position_embeddings:
            return None
        if any(p.dtype != torch.float32 for p in model.parameters()) or model.lm_head.bias is not None:
            return None
        if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
            return None
        return Qwen2Step(model, max_pos)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, cache, mask: torch.Tensor | None) -> torch.Tensor:
        """Logits [B, V] of one new token per row; `ids`, `positions` [B]; `mask` [B, 1, 1, L] (True: attend) or None."""
        b = ids.shape[0]
        heads, kv, d = self.heads, self.kv_heads, self.head_dim
        half = d // 2
        h = F.embedding(ids, self.embed)
        cos, sin = self.cos[positions][:, None, :], self.sin[positions][:, None, :]
        for i, (w_in, eps_in, qkv_w, qkv_b, o_w, w_post, eps_post, gu_w, down_w) in enumerate(self.layers):
            x = w_in * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps_in))
            qkv = torch.addmm(qkv_b, x, qkv_w)
            q = qkv[:, :heads * d].view(b, heads, d)
            k = qkv[:, heads * d:(heads + kv) * d].view(b, kv, d)
            v = qkv[:, (heads + kv) * d:].view(b, kv, 1, d)
            q = (q * cos) + (torch.cat((-q[..., half:], q[..., :half]), dim=-1) * sin)
            k = (k * cos) + (torch.cat((-k[..., half:], k[..., :half]), dim=-1) * sin)
            keys, values = cache.layers[i].update(k.unsqueeze(2), v)
            # One query per row: the query heads of a key/value head become its query rows (no repeated keys).
            o = F.scaled_dot_product_attention(q.view(b, kv, heads // kv, d), keys, values, attn_mask=mask,
                                               scale=self.scaling)
            h = h + o.reshape(b, heads * d) @ o_w
            x = w_post * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps_post))
            gu = x @ gu_w
            h = h + (F.silu(gu[:, :self.intermediate]) * gu[:, self.intermediate:]) @ down_w
        w, eps = self.norm
        return (w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps))) @ self.lm_head
