"""`dispo-wb train --engine verl`: one run config -> one verl job, logged into our MLflow run.

`verl_overrides` turns a RunConfig into verl's Hydra overrides (the golden test shows a whole
list); `launch` creates the MLflow run first (our params and tags, `engine=verl`), hands it to
verl through `MLFLOW_TRACKING_URI` and `MLFLOW_RUN_ID`, prints the full command and runs
`python -m verl.trainer.main_ppo` (on the Ray cluster `RAY_ADDRESS` names, else a local one).
While verl runs and when it ends, verl's metric keys are translated into ours in the same run
(`workbench.engines.verl.keys`), so collapse detection, reports and sweeps read it unchanged.

How the run config maps, and what does not carry over:
- `updates_per_rollout` = `ppo_epochs` x mini-batches: verl splits a rollout batch by prompts
  (`ppo_mini_batch_size` counts prompts), so `prompts_per_step` must be a multiple of the
  mini-batch count; the local trainer splits responses and has no such constraint.
- `rollout_lag > 0` is refused: verl's off-policy options (`trainer.v1.trainer_mode`
  separate_async, `sampler.max_off_policy_threshold`) bound staleness in whole trainer steps
  and let it vary per sample, while the lag is an exact count of optimizer steps; with lag 0,
  ratios move away from 1 through the later mini-batches of each rollout batch
  (`updates_per_rollout`), as in the local trainer.
- The recipe's other parts: `dynamic_sampling` is verl's group filter
  (`algorithm.filter_groups`, metric `reward`: groups whose rewards are all equal are dropped
  and refilled), `overlong` is verl's DAPO reward manager with its `overlong_buffer_cfg`
  (same ramp: 0 up to max - buffer, then linear to -factor at the limit).
- The objective's aggregation becomes verl's `loss_agg_mode`; the clip objectives' bounds are
  verl's `clip_ratio_low/high` (same meaning: offsets from 1); DISPO's four bounds and mask_mode
  go to `WorkbenchPolicyLossConfig` through `policy_loss._target_`.
- verl dumps each step's responses (`trainer.rollout_data_dir`); `rollouts.py` turns them into
  `response/repetition_rate` and the lengths by correctness, logged at that step with the rest.
- No KL term, no entropy bonus (none of the compared objectives has them); `dr_grpo` advantages
  are `algorithm.norm_adv_by_std_in_grpo=false`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from workbench.config import RunConfig, dump_yaml, flatten
from workbench.errors import UserError
from workbench.params import DISPO_BOUNDS
from workbench.names import (ENTROPY_MEAN, EVAL_PREFIX, FAILED, FINISHED, KILLED, KIND_TRAIN, STOPPED, TAG_COLLAPSE,
                             TAG_COLLAPSE_STEP, TAG_KIND)
from workbench.train.launch import recipe_tags
from workbench.train.results import RunResult

LOSS_AGG = {"token_mean": "token-mean", "seq_mean_token_mean": "seq-mean-token-mean",
            "seq_mean_token_sum_norm": "seq-mean-token-sum-norm"}
DISPO_FIELDS = (*DISPO_BOUNDS, "mask_mode")
CONFIG_TARGET = "workbench.engines.verl.config.WorkbenchPolicyLossConfig"
REWARD_FILE = Path(__file__).with_name("reward.py")
POLL_S = 15.0


def _value(v: Any) -> str:
    """A Hydra override value: inf as Hydra spells it, booleans lower case."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return str(v)


def max_prompt_length(cfg: RunConfig, max_prompt_chars: int | None = None) -> int:
    """verl's `data.max_prompt_length`: micro models read one token per character plus <bos>."""
    from workbench.models.policy import is_micro

    if is_micro(cfg.model.name):
        chars = max_prompt_chars or cfg.task.max_terms * (cfg.task.digits + 1)
        return chars + 1
    return 1024


def refusals(cfg: RunConfig) -> list[str]:
    """What in `cfg` verl would not run as asked, one line each (empty: runnable)."""
    out = []
    if cfg.rollout_lag:
        out.append(f"engine verl: rollout_lag={cfg.rollout_lag} has no verl counterpart (its async modes bound staleness "
                   "in trainer steps, not an exact count of optimizer steps); set rollout_lag=0 and make updates "
                   "off-policy with updates_per_rollout")
    return out


def recipe_overrides(cfg: RunConfig) -> list[str]:
    """verl's options for the recipe parts outside the loss: dynamic sampling and the overlong penalty."""
    out = []
    if cfg.dynamic_sampling:
        out += ["algorithm.filter_groups.enable=true", "algorithm.filter_groups.metric=reward"]
    if cfg.overlong.enabled:
        o, kw = cfg.overlong, "+reward.reward_kwargs"
        out += ["reward.reward_manager.name=dapo", f"{kw}.max_resp_len={cfg.rollout.max_new_tokens}",
                f"{kw}.overlong_buffer_cfg.enable=true", f"{kw}.overlong_buffer_cfg.len={o.buffer}",
                f"{kw}.overlong_buffer_cfg.penalty_factor={_value(o.factor)}", f"{kw}.overlong_buffer_cfg.log=false"]
    return out


def verl_overrides(cfg: RunConfig, *, model_path: str, train_file: str | Path, val_file: str | Path,
                   prompt_length: int, reward_file: str | Path = REWARD_FILE, rollout_dir: str | Path | None = None) -> list[str]:
    """verl's Hydra overrides for one run config (`python -m verl.trainer.main_ppo <these>`)."""
    from workbench.core.objectives import ClipParams, get_spec

    problems = refusals(cfg)
    if problems:
        raise UserError(problems[0])
    if cfg.rollout.prompts_per_step % cfg.minibatches:
        raise UserError(f"engine verl splits a rollout batch by prompts: rollout.prompts_per_step "
                        f"({cfg.rollout.prompts_per_step}) must be a multiple of updates_per_rollout/epochs "
                        f"({cfg.minibatches})")
    spec = get_spec(cfg.objective.name)
    params = cfg.objective.build_params()
    mini = cfg.rollout.prompts_per_step // cfg.minibatches
    micro = cfg.micro_batch_size or mini * cfg.rollout.group_size
    a, r = "actor_rollout_ref.actor", "actor_rollout_ref.rollout"
    out = [
        "algorithm.adv_estimator=grpo",
        f"algorithm.norm_adv_by_std_in_grpo={_value(cfg.advantage == 'grpo')}",
        "algorithm.use_kl_in_reward=false",
        f"data.train_files={train_file}",
        f"data.val_files={val_file}",
        f"data.train_batch_size={cfg.rollout.prompts_per_step}",
        f"data.max_prompt_length={prompt_length}",
        f"data.max_response_length={cfg.rollout.max_new_tokens}",
        "data.shuffle=false",  # the exported rows are already the seed's draw order
        f"actor_rollout_ref.model.path={model_path}",
        f"actor_rollout_ref.model.trust_remote_code={_value(cfg.model.trust_remote_code)}",
        f"actor_rollout_ref.model.enable_gradient_checkpointing={_value(cfg.model.gradient_checkpointing)}",
        f"{a}.optim.lr={_value(cfg.lr)}",
        f"{a}.optim.weight_decay={_value(cfg.weight_decay)}",
        f"{a}.grad_clip={_value(cfg.max_grad_norm)}",
        f"{a}.ppo_epochs={cfg.epochs}",
        f"{a}.ppo_mini_batch_size={mini}",
        f"{a}.ppo_micro_batch_size_per_gpu={micro}",
        f"{a}.use_dynamic_bsz=false",  # equal micro-batch counts keep the regime sums exact
        f"{a}.use_kl_loss=false",
        f"{a}.entropy_coeff=0",
        f"{a}.loss_agg_mode={LOSS_AGG[cfg.objective.aggregation or spec.aggregation]}",
        f"{a}.policy_loss.loss_mode=wb_{cfg.objective.name}",
    ]
    if isinstance(params, ClipParams):
        out += [f"{a}.clip_ratio_low={_value(params.eps_low)}", f"{a}.clip_ratio_high={_value(params.eps_high)}"]
    else:
        out += [f"{a}.policy_loss._target_={CONFIG_TARGET}"]
        out += [f"+{a}.policy_loss.{name}={_value(getattr(params, name))}" for name in DISPO_FIELDS]
    out += [
        f"{r}.name=vllm",  # verl samples with vLLM (or SGLang); it has no transformers-generate rollout
        f"{r}.n={cfg.rollout.group_size}",
        f"{r}.temperature={_value(cfg.rollout.temperature)}",
        f"{r}.top_p={_value(cfg.rollout.top_p)}",
        f"{r}.gpu_memory_utilization={_value(cfg.rollout.gpu_memory_utilization)}",
        f"{r}.log_prob_micro_batch_size_per_gpu={micro}",
        f"{r}.val_kwargs.n={cfg.eval.k}",
        f"{r}.val_kwargs.temperature={_value(cfg.eval.temperature)}",
        f"{r}.val_kwargs.do_sample=true",
        f"reward.custom_reward_function.path={reward_file}",
        "reward.custom_reward_function.name=compute_score",
        *recipe_overrides(cfg),
        f"trainer.total_training_steps={cfg.steps}",
        "trainer.total_epochs=1",  # the train file holds exactly steps x prompts_per_step prompts
        f"trainer.test_freq={cfg.eval.every}",
        "trainer.val_before_train=true",
        "trainer.save_freq=-1",
        "trainer.logger=[console,mlflow]",
        f"trainer.project_name={cfg.experiment}",
        f"trainer.experiment_name={cfg.resolved_run_name()}",
    ]
    if rollout_dir is not None:  # each step's responses, for the statistics verl does not log (rollouts.py)
        out.append(f"trainer.rollout_data_dir={rollout_dir}")
    return out


def verl_command(overrides: list[str], engine_args: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The full command; `engine_args` (e.g. trainer.n_gpus_per_node=8) come last and win."""
    return [sys.executable, "-m", "verl.trainer.main_ppo", *overrides, *engine_args]


def check_available() -> None:
    if importlib.util.find_spec("verl") is None:
        raise UserError("engine verl: verl is not installed in this environment; build it with `make install-verl` "
                        "and run .venv-verl/bin/dispo-wb (or pip install '.[verl]')")


def check_registered(objective: str) -> None:
    """verl logs a failing plugin import at DEBUG only: look in its registry ourselves."""
    import verl  # noqa: F401  (runs the verl.plugins entry points)
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

    name = f"wb_{objective}"
    if name not in POLICY_LOSS_REGISTRY:
        wb = sorted(k for k in POLICY_LOSS_REGISTRY if k.startswith("wb_")) or ["none"]
        raise UserError(f"engine verl: loss {name!r} is not in verl's registry (workbench losses there: "
                        f"{', '.join(wb)}); is dispo-wb installed in verl's environment with its verl.plugins entry point?")


def check_config(cfg: RunConfig, engine_args: list[str] | tuple[str, ...] = ()) -> None:
    """verl's own config checks (`workbench.engines.verl.checks`) on the run's overrides, before anything is
    exported: a key verl does not have or a batch that does not divide stops the launch in one line."""
    from workbench.engines.verl.checks import check_overrides

    where = work_dir(cfg)
    overrides = verl_overrides(cfg, model_path=str(where / "model"), train_file=where / "data/train.parquet",
                               val_file=where / "data/val.parquet", prompt_length=max_prompt_length(cfg))
    problems = check_overrides([*overrides, *engine_args])
    if problems:
        raise UserError(f"engine verl: {problems[0]}")


def work_dir(cfg: RunConfig) -> Path:
    """Where a run's parquet files and exported model go: one folder per config."""
    digest = hashlib.sha256(dump_yaml(cfg).encode()).hexdigest()[:12]
    return Path(".cache/verl") / f"{cfg.resolved_run_name()}-{digest}"


def prepare(cfg: RunConfig) -> tuple[list[str], Path]:
    """Export data and model, return (overrides, work dir)."""
    from workbench.engines.verl.data import export_model, export_parquet

    where = work_dir(cfg)
    files = export_parquet(cfg, where / "data")
    model_path = export_model(cfg, where / "model")
    return verl_overrides(cfg, model_path=model_path, train_file=files.train.resolve(), val_file=files.val.resolve(),
                          prompt_length=max_prompt_length(cfg, files.max_prompt_chars),
                          rollout_dir=(where / "rollouts").resolve()), where


def launch(cfg: RunConfig, *, tracking_uri: str | None = None, dry_run: bool = False,
           engine_args: list[str] | tuple[str, ...] = (), echo: Callable[[str], None] = print) -> int:
    """`dispo-wb train --engine verl`: print the verl command, run it unless dry_run; exit code."""
    if dry_run:
        where = work_dir(cfg)
        overrides = verl_overrides(cfg, model_path=cfg.model.name if not _micro(cfg) else str(where / "model"),
                                   train_file=where / "data/train.parquet", val_file=where / "data/val.parquet",
                                   prompt_length=max_prompt_length(cfg))
        echo(shlex.join(verl_command(overrides, engine_args)))
        return 0
    result = train(cfg, tracking_uri=tracking_uri, engine_args=engine_args, echo=echo)
    ev = ", ".join(f"{k} {v:.3f}" for k, v in result.final_eval.items())
    echo(f"run {result.run_id}: {result.status} after {result.steps_done} steps in {result.wall_s:.0f}s; {ev}")
    if result.collapse:
        echo(f"collapse: {result.collapse} from step {result.collapse_step}")
    if result.status == FAILED:
        echo(f"error: run failed: {result.reason}")
        return 1
    return 0


def train(config: RunConfig, *, tracking_uri: str | None = None, parent_run_id: str | None = None,
          extra_tags: dict[str, str] | None = None, on_eval: Callable[[int, dict[str, float]], bool] | None = None,
          engine_args: list[str] | tuple[str, ...] = (), echo: Callable[[str], None] = print,
          **_: Any) -> RunResult:
    """One verl run as a RunResult, like `workbench.train.trainer.train` (sweeps call this per seed)."""
    from workbench import tracking

    problems = refusals(config)
    if problems:  # before anything is exported
        raise UserError(problems[0])
    check_available()
    check_registered(config.objective.name)
    check_config(config, engine_args)
    overrides, _where = prepare(config)
    cmd = verl_command(overrides, engine_args)
    tags = {"objective": config.objective.name, "task": config.task.name, "model": config.model.name,
            "engine": "verl", "git_commit": tracking.git_commit(), TAG_KIND: KIND_TRAIN, **recipe_tags(config),
            **(extra_tags or {})}
    tracker = tracking.RunTracker(experiment=config.experiment, run_name=config.resolved_run_name(),
                                  tracking_uri=tracking_uri, params=flatten(config.model_dump(mode="python")),
                                  tags=tags, parent_run_id=parent_run_id,
                                  artifacts={"config.yaml": dump_yaml(config), "verl_command.txt": shlex.join(cmd)})
    echo(shlex.join(cmd))
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.resolve_tracking_uri(tracking_uri),
           "MLFLOW_RUN_ID": tracker.run_id}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    model_path = next((o.split("=", 1)[1] for o in overrides if o.startswith("actor_rollout_ref.model.path=")), None)
    follower = _Follower(config, tracker.run_id, tracking_uri, on_eval, _where / "rollouts", model_path)
    status, reason = FINISHED, None
    try:
        while proc.poll() is None:
            try:
                proc.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                if follower.poll():
                    status = STOPPED
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        status, reason = KILLED, "interrupted"
    if proc.returncode and status == FINISHED:
        status, reason = FAILED, f"verl exited with code {proc.returncode}"
    follower.poll(final=True)
    tracker.finish(status=FINISHED if status == STOPPED else status, reason=reason)
    return follower.result(status, time.monotonic() - start, reason)


def _micro(cfg: RunConfig) -> bool:
    from workbench.models.policy import is_micro

    return is_micro(cfg.model.name)


class _Follower:
    """Reads verl's keys from the run, logs ours, answers on_eval, detects collapse."""

    def __init__(self, cfg: RunConfig, run_id: str, tracking_uri: str | None, on_eval,
                 rollout_dir: Path | None = None, model_path: str | None = None):
        self.cfg, self.run_id, self.uri, self.on_eval = cfg, run_id, tracking_uri, on_eval
        self.rollout_dir, self.model_path, self._encode = rollout_dir, model_path, None
        self.logged: set[tuple[int, str]] = set()
        self.ours: dict[str, list[tuple[int, float]]] = {}
        self.responses: dict[int, dict[str, float]] = {}  # step -> statistics from verl's rollout dump
        self.collapse: tuple[str | None, int | None] = (None, None)

    def _read_rollouts(self, final: bool) -> None:
        """Statistics of the steps whose dump is complete: every step but the newest while verl runs."""
        from workbench.engines.verl.rollouts import read_rows, step_files, step_metrics, tokenizer_encoder

        if self.rollout_dir is None or self.model_path is None:
            return
        files = step_files(self.rollout_dir)
        newest = max(files, default=0)
        for step in sorted(set(files) - set(self.responses)):
            if step == newest and not final:
                break
            if self._encode is None:
                self._encode = tokenizer_encoder(self.model_path, self.cfg.model.trust_remote_code)
            self.responses[step] = step_metrics(read_rows(files[step]), self._encode, self.cfg)

    def poll(self, final: bool = False) -> bool:
        """Translate new steps; True when on_eval asked to stop or a collapse should stop the run."""
        from workbench import tracking
        from workbench.metrics.collapse import SIGNALS, detect_collapse
        from workbench.engines.verl.keys import translate_history

        keys = [k for k in tracking.metric_keys(self.run_id, self.uri) if not _is_ours(k)]
        self.ours = translate_history(tracking.metric_histories(self.run_id, keys, self.uri))
        self._read_rollouts(final)
        for step, stats in sorted(self.responses.items()):
            for key, value in stats.items():
                self.ours.setdefault(key, []).append((step, value))
        by_step: dict[int, dict[str, float]] = {}
        for key, series in self.ours.items():
            for step, value in series:
                by_step.setdefault(step, {})[key] = value
        stop = False
        for step in sorted(by_step):
            # A step's rollout statistics can arrive a poll after its verl metrics: log each key once.
            new = {k: v for k, v in by_step[step].items() if (step, k) not in self.logged}
            if not new:
                continue
            tracking.log_run_metrics(self.run_id, new, step, self.uri)
            self.logged.update((step, k) for k in new)
            evals = {k: v for k, v in new.items() if k.startswith(EVAL_PREFIX)}
            if evals and self.on_eval is not None and self.on_eval(step, evals):
                stop = True
        if self.collapse[0] is None:
            steps = sorted(by_step)
            verdict = detect_collapse(steps, {k: [by_step[s].get(k, math.nan) for s in steps] for k in SIGNALS.values()},
                                      self.cfg.collapse)
            if verdict.kind:
                self.collapse = (verdict.kind, verdict.onset_step)
                tracking.set_run_tags(self.run_id, {TAG_COLLAPSE: verdict.kind, TAG_COLLAPSE_STEP: str(verdict.onset_step)},
                                      self.uri)
                stop = stop or self.cfg.collapse.stop
        return stop

    def result(self, status: str, wall_s: float, reason: str | None) -> RunResult:
        final = {k: s[-1][1] for k, s in self.ours.items() if k.startswith(EVAL_PREFIX) and s}
        best = {k: max(v for _, v in s) for k, s in self.ours.items() if k.startswith(EVAL_PREFIX) and s}
        steps = max((s[-1][0] for s in self.ours.values() if s), default=0)
        ent = [v for _, v in self.ours.get(ENTROPY_MEAN, [])]
        return RunResult(run_id=self.run_id, status=status, steps_done=steps, wall_s=wall_s, final_eval=final,
                         best_eval=best, collapse=self.collapse[0], collapse_step=self.collapse[1],
                         entropy_first=sum(ent[:5]) / len(ent[:5]) if ent else math.nan,
                         entropy_last=ent[-1] if ent else math.nan, reason=reason)


def _is_ours(key: str) -> bool:
    return key.split("/", 1)[0] in {"regime", "ratio", "loss", "grad", "entropy", "response", "reward", "train",
                                    "eval", "perf", "batch"}
