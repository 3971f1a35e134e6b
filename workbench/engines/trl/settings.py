"""Our run config as TRL's `GRPOConfig` arguments, and the configs TRL cannot run faithfully.

How one rollout batch maps onto TRL (W processes, B = prompts_per_step * group_size responses):
- the generation batch is B responses (`generation_batch_size`), `num_generations` = G;
- it is split into `minibatches` = updates_per_rollout / epochs optimizer steps per pass and
  taken `epochs` times (`num_iterations`), so each batch gets `updates_per_rollout` updates;
- a minibatch is B / minibatches responses, B / (minibatches * W) per process, accumulated in
  micro-batches of `micro_batch_size` (`gradient_accumulation_steps`).
TRL computes old log-probs only when one generation batch feeds more than one optimizer step
(`gradient_accumulation_steps % (steps_per_generation * num_iterations) != 0`); otherwise it
uses the current log-probs detached, r == 1 and no clip bound can act (TRL issues #3120,
#3757). That config is refused here, before anything is written.
"""

from __future__ import annotations

from typing import Any

from workbench.config import RunConfig
from workbench.errors import UserError


def layout(cfg: RunConfig, world_size: int) -> dict[str, int]:
    """Batch sizes per process for `world_size` processes; UserError when they do not divide."""
    batch = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    per_process, rest = divmod(batch, cfg.minibatches * world_size)
    if rest or per_process == 0:
        raise UserError(f"trl engine: responses per step ({batch}) must split into updates_per_rollout/epochs "
                        f"({cfg.minibatches}) minibatches x {world_size} processes evenly; change "
                        "rollout.prompts_per_step, rollout.group_size or updates_per_rollout")
    micro = cfg.micro_batch_size or per_process
    if per_process % micro:
        raise UserError(f"trl engine: micro_batch_size ({micro}) must divide the per-process minibatch ({per_process})")
    accumulation = per_process // micro
    return {"per_device_train_batch_size": micro, "gradient_accumulation_steps": accumulation,
            "steps_per_generation": cfg.minibatches * accumulation, "num_iterations": cfg.epochs}


def computes_old_logps(gradient_accumulation_steps: int, steps_per_generation: int, num_iterations: int) -> bool:
    """TRL 1.16's rule (`_generate_and_score_completions`) for computing old log-probs, vLLM aside."""
    return gradient_accumulation_steps % (steps_per_generation * num_iterations) != 0


def refusals(cfg: RunConfig) -> list[str]:
    """What in `cfg` the trl engine would not run as asked, one line each (empty: runnable)."""
    out = []
    if cfg.updates_per_rollout == 1:
        out.append("trl engine: updates_per_rollout=1 makes every update on-policy; TRL then never computes old "
                   "log-probs, r == 1 and no clip bound can act (TRL issues #3120, #3757); set updates_per_rollout >= 2")
    if cfg.rollout_lag:
        out.append(f"trl engine: rollout_lag={cfg.rollout_lag} is not supported (TRL samples with the current policy); "
                   "set rollout_lag=0 and make the updates off-policy with updates_per_rollout")
    if cfg.dynamic_sampling:
        out.append("trl engine: dynamic_sampling is not supported (TRL trains on every group it generates; the "
                   "dapo and cispo recipes need it: run them with --engine local or verl, or set dynamic_sampling=false)")
    return out


def grpo_kwargs(cfg: RunConfig, *, world_size: int, output_dir: str, use_cpu: bool) -> dict[str, Any]:
    """Keyword arguments of `trl.GRPOConfig` for `cfg` on `world_size` processes."""
    lay = layout(cfg, world_size)
    return {
        **lay,
        "output_dir": output_dir,
        "max_steps": cfg.steps * cfg.updates_per_rollout,
        "logging_steps": cfg.updates_per_rollout,  # one log per rollout batch, our step
        "learning_rate": cfg.lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm,
        "seed": cfg.seed,
        "num_generations": cfg.rollout.group_size,
        "max_completion_length": cfg.rollout.max_new_tokens,
        "temperature": cfg.rollout.temperature,
        "top_p": cfg.rollout.top_p,
        "beta": 0.0,
        "scale_rewards": "group" if cfg.advantage == "grpo" else "none",
        "importance_sampling_level": "token",  # gspo's sequence ratio is built by our objective
        "mask_truncated_completions": False,
        "use_vllm": cfg.rollout.backend == "vllm",
        "vllm_importance_sampling_correction": False,  # the loss is ours alone; old log-probs come from the trainer
        "vllm_gpu_memory_utilization": cfg.rollout.gpu_memory_utilization,
        "use_cpu": use_cpu,
        "bf16": not use_cpu and cfg.model.dtype != "float32",
        "gradient_checkpointing": cfg.model.gradient_checkpointing,  # TRL's default is on
        "report_to": "none",  # metrics reach MLflow through our callback, under our keys
        # TRL's own checkpoints (model, optimizer, scheduler, RNG, step) every checkpoint_every of our steps:
        # `dispo-wb train --resume RUN_ID` continues from the last one (resume_from_checkpoint).
        "save_strategy": "steps",
        "save_steps": cfg.checkpoint_every * cfg.updates_per_rollout,
        "save_total_limit": 2,
        "log_completions": False,
        "disable_tqdm": True,
    }
