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
from typing import Any, Callable, NamedTuple

from workbench.config import ConfigError, ModelConfig, RunConfig, TaskConfig, build_run_config, read_yaml
from workbench.errors import UserError
from workbench.names import FINISHED, RUNNING, TAG_FAILURE, TAG_PID, TAG_RECIPE, TAG_RECIPE_DIFF
from workbench.params import is_micro


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


def recipe_note(cfg: RunConfig) -> str | None:
    """One line when the run does not follow the whole recipe it is measured against; None when it does."""
    from workbench.recipes import get_recipe

    name, diff = cfg.recipe_differences()
    if not diff:
        return None
    recipe = get_recipe(name)
    how = (f"the run sets {'; '.join(diff)}" if cfg.recipe else
           f"objective {cfg.objective.name} runs without the rest of its recipe: {'; '.join(diff)}; --recipe {name} sets them")
    return f"recipe note ({recipe.paper}): {how}"


def recipe_tags(cfg: RunConfig) -> dict[str, str]:
    """The run's recipe tags: the recipe it is measured against and the parts it does not follow."""
    name, diff = cfg.recipe_differences()
    return {} if name is None else {TAG_RECIPE: name, TAG_RECIPE_DIFF: "; ".join(diff)}


def resume_config(run_id: str, tracking_uri: str | None, overrides: dict[str, Any]) -> RunConfig:
    """The config a run was started with (its `config.yaml` artifact), optionally with more steps."""
    from workbench import tracking

    try:  # a refusal writes nothing: a mistyped store path must not become a new, empty store
        tracking.require_store(tracking_uri)
    except UserError as e:
        raise UserError(f"--resume: {e}") from None
    try:
        info = tracking.run_info(run_id, tracking_uri)
    except UserError:
        raise
    except Exception as e:  # MLflow raises its own exception types for unknown ids
        raise UserError(f"--resume: no run {run_id!r} in {tracking.resolve_tracking_uri(tracking_uri)} ({type(e).__name__})") from None
    if info["status"] == FINISHED:
        raise UserError(f"--resume: run {run_id} already FINISHED; start a new run instead")
    if info["status"] == RUNNING:
        # RUNNING is what a killed process leaves behind: say so in the store before going on.
        from workbench.tracking.liveness import writer_gone
        from workbench.tracking.stale import mark_killed

        gone = writer_gone(info["tags"])
        if gone is None:
            pid = info["tags"].get(TAG_PID)
            raise UserError(f"--resume: run {run_id} is RUNNING" + (f" in process {pid}" if pid else "")
                            + "; stop it first (Ctrl-C), or wait for it to end")
        mark_killed(run_id, f"found RUNNING but {gone}; resumed with dispo-wb train --resume", tracking_uri)
    from workbench.train.checkpoint import checkpoint_path

    import os

    import yaml

    # One small file: MLflow's download bar would be the only output of `train --resume -q`.
    previous = os.environ.get(_ARTIFACT_BAR)
    os.environ[_ARTIFACT_BAR] = "false"
    try:
        data = yaml.safe_load(tracking.download_text(run_id, "config.yaml", tracking_uri))
    finally:
        if previous is None:
            os.environ.pop(_ARTIFACT_BAR)
        else:
            os.environ[_ARTIFACT_BAR] = previous
    # An engine run resumes from its engine's own checkpoints, which its launcher looks for.
    if data.get("engine", "local") == "local" and not checkpoint_path(run_id).exists():
        raise UserError(f"--resume: run {run_id} has no checkpoint at {checkpoint_path(run_id)}")
    cfg = build_run_config(data, {k: v for k, v in overrides.items() if v is not None})
    # The run goes on: the reason it ended before no longer describes it (a new end sets its own).
    from workbench.tracking.store import drop_tag

    drop_tag(run_id, TAG_FAILURE, tracking_uri)
    return cfg


_ARTIFACT_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class CheckpointSource(NamedTuple):
    """What `dispo-wb eval --checkpoint` scores: the model to build, the task it was trained on, its weights."""

    model: ModelConfig
    task: TaskConfig
    state: Path | None  # a run checkpoint's `state.pt` (the trained policy); None: the model is complete as named
    origin: str  # where the task came from, for the output


def checkpoint_source(checkpoint: str, settings: dict[str, Any] | None = None,
                      tracking_uri: str | None = None) -> CheckpointSource:
    """Read what `checkpoint` names, without torch: a bad input is refused before it loads.

    A run's checkpoint folder (`.cache/checkpoints/<run_id>`, what `train` writes) carries the
    run's config next to its `state.pt`; a folder from before that finds it in the run's
    `config.yaml` artifact in the tracking store. `settings` (`--set task.KEY=VALUE`) override
    the task. A saved model folder or a micro model name has no run: the default task.
    """
    from workbench.train.checkpoint import CONFIG_FILE, STATE_FILE

    bad = sorted(k for k in settings or {} if not k.startswith("task."))
    if bad:
        raise ConfigError([f"--set {bad[0]}: eval takes task settings only (task.KEY=VALUE, e.g. task.digits=2)"])
    path = Path(checkpoint).expanduser()
    if path.is_file() and path.name == STATE_FILE:
        path = path.parent
    if not (path / STATE_FILE).is_file():
        if not is_micro(checkpoint) and not path.exists():
            raise UserError(f"--checkpoint: {checkpoint} is not a run's checkpoint folder, a saved model folder or a "
                            "micro model name")
        task = build_run_config({}, settings=settings).task
        return CheckpointSource(ModelConfig(name=checkpoint), task, None, "the default task" if not settings else "--set")
    if (path / CONFIG_FILE).is_file():
        data, origin = read_yaml(path / CONFIG_FILE), str(path / CONFIG_FILE)
    else:
        data, origin = _run_config_data(path.name, tracking_uri, path), f"run {path.name}"
    cfg = build_run_config(data, settings=settings)
    # The device is this machine's choice, not the training machine's.
    return CheckpointSource(cfg.model.model_copy(update={"device": "auto"}), cfg.task, path / STATE_FILE,
                            origin + (" with --set" if settings else ""))


def _run_config_data(run_id: str, tracking_uri: str | None, path: Path) -> dict[str, Any]:
    """The `config.yaml` artifact of the run a checkpoint folder is named after."""
    import yaml  # here, not at import: the refusal path of the CLI never needs it

    from workbench import tracking

    try:
        uri = tracking.require_store(tracking_uri)
        return yaml.safe_load(tracking.download_text(run_id, "config.yaml", uri)) or {}
    except UserError as e:
        reason = str(e)
    except Exception as e:  # MLflow raises its own exception types for unknown runs and artifacts
        reason = f"run {run_id} or its config.yaml is not in {tracking.resolve_tracking_uri(tracking_uri)} ({type(e).__name__})"
    raise UserError(f"--checkpoint: {path} holds no config.yaml and {reason}; pass --tracking-uri of the store "
                    "the run was logged to")


def evaluate_checkpoint(checkpoint: str, benchmarks: list[str], *, k: int, temperature: float, limit: int | None,
                        max_new_tokens: int, seed: int, settings: dict[str, Any] | None = None,
                        tracking_uri: str | None = None, echo: Callable[[str], None] | None = None) -> dict[str, float]:
    """avg@k and pass@k of a saved policy on `benchmarks`, `micro` drawn from the task it was trained on."""
    source = checkpoint_source(checkpoint, settings, tracking_uri)
    if echo is not None:
        echo(f"task: {_task_text(source.task)} (from {source.origin})")
    import torch

    from workbench.train.checkpoint import load
    from workbench.train.evaluation import evaluate
    from workbench.models.policy import build_prompt, load_policy, select_device
    from workbench.tasks.rewards import RewardPool, score_answer
    from workbench.rollout.hf import HFBackend
    from workbench.tasks.benchmarks import load_benchmark

    random.seed(seed)
    torch.manual_seed(seed)
    mcfg = source.model
    try:
        model, tok = load_policy(mcfg, seed)
    except ValueError as e:
        raise UserError(f"--checkpoint: {e}") from None
    if source.state is not None:
        model.load_state_dict(load(source.state.parent.name, source.state.parent.parent)["policy"])
    device = select_device(mcfg)
    model = model.to(device).eval()
    backend = HFBackend(model, tok, device)
    micro_prompts = is_micro(mcfg.name) or getattr(tok, "chat_template", None) is None
    out: dict[str, float] = {}
    with RewardPool(workers=1, scorer=functools.partial(score_answer, require_boxed=True)) as pool:
        for name in benchmarks:
            try:
                problems = load_benchmark(name, source.task, limit=limit)
            except ValueError as e:
                raise UserError(f"--benchmark: {e}") from None
            out.update(evaluate(backend, tok, problems, benchmark=name, k=k, temperature=temperature,
                                max_new_tokens=max_new_tokens, score=lambda t, g: pool.score(t, g).rewards,
                                prompt_of=lambda q: build_prompt(tok, q, micro_prompts)))
    return out


def _task_text(task: TaskConfig) -> str:
    if task.name == "dataset":
        return f"dataset {task.source}"
    return (f"chain_sum, {task.min_terms}-{task.max_terms} terms of {task.digits} digit(s), "
            f"held-out set of {task.eval_size} (seed {task.eval_seed})")


__all__ = ["parse_set_flags", "run_config_from_cli", "recipe_note", "recipe_tags", "resume_config", "checkpoint_source", "evaluate_checkpoint",
           "ConfigError"]
