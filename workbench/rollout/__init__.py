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
    from workbench.models.policy import is_micro
    from workbench.rollout.vllm import make_vllm_backend

    # A micro model exists only in memory: the engine gets it saved to a folder.
    source = model if is_micro(config.model.name) else config.model.name
    return make_vllm_backend(source, tokenizer, config.rollout, config.seed,
                             trust_remote_code=config.model.trust_remote_code)
