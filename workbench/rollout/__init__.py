"""Rollout backends behind one interface (see base.py): `hf` everywhere, `vllm` on GPUs."""

from __future__ import annotations

import torch

from workbench.rollout.base import RolloutBackend, Rollouts, Sampling

__all__ = ["RolloutBackend", "Rollouts", "Sampling", "make_backend"]


def make_backend(config, model: torch.nn.Module, tokenizer, device: torch.device) -> RolloutBackend:
    """The backend named by `config.rollout.backend`, sampling from `model` (hf) or a copy of it (vllm)."""
    if config.rollout.backend == "hf":
        from workbench.rollout.hf import HFBackend

        return HFBackend(model, tokenizer, device)
    from workbench.rollout.vllm import make_vllm_backend

    return make_vllm_backend(config.model.name, tokenizer, config.rollout, config.seed)
