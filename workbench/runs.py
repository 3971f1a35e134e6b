"""What the `train` and `eval` commands do between parsing and the trainer.

Building a config from a file plus flags, recovering a run's config to resume it, and
evaluating a saved model. Kept apart from cli.py so the same steps are callable from
Python and from the sweep. Parsing and validation import neither torch nor mlflow: a bad
input is refused before they load.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Any

from workbench.config import ConfigError, ModelConfig, RunConfig, TaskConfig, build_run_config, read_yaml
from workbench.errors import UserError
from workbench.names import FINISHED, RUNNING, TAG_PID


def parse_set_flags(items: list[str]) -> dict[str, Any]:
    """`--set key.path=value` flags -> overrides; values are read as YAML (0.4, true, [a, b], .inf)."""
    if not items:
        return {}
    import yaml  # here, not at the top: a command line without --set is refused without it

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not all(key.strip().split(".")):
            raise ConfigError([f"--set {item!r}: expected KEY=VALUE with a dotted config field, e.g. sft.target_low=0.4"])
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError([f"--set {item!r}: the value is not valid YAML"]) from None
        out[key.strip()] = value
    return out


def run_config_from_cli(path: Path | None, flags: dict[str, Any], settings: dict[str, Any] | None = None) -> RunConfig:
    """The file, then `--set` settings (None is a value there), then the named flags (None: not given)."""
    data = read_yaml(path) if path else {}
    return build_run_config(data, {k: v for k, v in flags.items() if v is not None}, settings=settings)


def resume_config(run_id: str, tracking_uri: str | None, overrides: dict[str, Any]) -> RunConfig:
    """The config a run was started with (its `config.yaml` artifact), optionally with more steps."""
    from workbench import tracking

    try:
        info = tracking.run_info(run_id, tracking_uri)
    except Exception as e:  # MLflow raises its own exception types for unknown ids
        raise UserError(f"--resume: no run {run_id!r} in {tracking.resolve_tracking_uri(tracking_uri)} ({type(e).__name__})") from None
    if info["status"] == FINISHED:
        raise UserError(f"--resume: run {run_id} already FINISHED; start a new run instead")
    if info["status"] == RUNNING:
        # RUNNING is what a killed process leaves behind: say so in the store before going on.
        from workbench.liveness import writer_gone
        from workbench.stale_runs import mark_killed

        gone = writer_gone(info["tags"])
        if gone is None:
            pid = info["tags"].get(TAG_PID)
            raise UserError(f"--resume: run {run_id} is RUNNING" + (f" in process {pid}" if pid else "")
                            + "; stop it first (Ctrl-C), or wait for it to end")
        mark_killed(run_id, f"found RUNNING but {gone}; resumed with dispo-wb train --resume", tracking_uri)
    from workbench.checkpoint import checkpoint_path

    if not checkpoint_path(run_id).exists():
        raise UserError(f"--resume: run {run_id} has no checkpoint at {checkpoint_path(run_id)}")
    import yaml

    data = yaml.safe_load(tracking.download_text(run_id, "config.yaml", tracking_uri))
    return build_run_config(data, {k: v for k, v in overrides.items() if v is not None})


def evaluate_checkpoint(checkpoint: str, benchmarks: list[str], *, k: int, temperature: float, limit: int | None,
                        max_new_tokens: int, seed: int) -> dict[str, float]:
    import torch

    from workbench.evaluation import evaluate
    from workbench.models import build_prompt, is_micro, load_policy, select_device
    from workbench.rewards import RewardPool, score_answer
    from workbench.rollout.hf import HFBackend
    from workbench.tasks.benchmarks import load_benchmark

    random.seed(seed)
    torch.manual_seed(seed)
    if not is_micro(checkpoint) and not Path(checkpoint).exists():
        raise UserError(f"--checkpoint: {checkpoint} is not a saved model folder or a micro model name")
    mcfg = ModelConfig(name=checkpoint)
    try:
        model, tok = load_policy(mcfg, seed)
    except ValueError as e:
        raise UserError(f"--checkpoint: {e}") from None
    device = select_device(mcfg)
    model = model.to(device).eval()
    backend = HFBackend(model, tok, device)
    micro_prompts = is_micro(checkpoint) or getattr(tok, "chat_template", None) is None
    out: dict[str, float] = {}
    with RewardPool(workers=1, scorer=functools.partial(score_answer, require_boxed=True)) as pool:
        for name in benchmarks:
            try:
                problems = load_benchmark(name, TaskConfig(), limit=limit)
            except ValueError as e:
                raise UserError(f"--benchmark: {e}") from None
            out.update(evaluate(backend, tok, problems, benchmark=name, k=k, temperature=temperature,
                                max_new_tokens=max_new_tokens, score=lambda t, g: pool.score(t, g).rewards,
                                prompt_of=lambda q: build_prompt(tok, q, micro_prompts)))
    return out


__all__ = ["parse_set_flags", "run_config_from_cli", "resume_config", "evaluate_checkpoint", "ConfigError"]
