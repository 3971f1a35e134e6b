"""The RL loop: rollout -> rewards -> advantages -> old log-probs -> minibatch updates -> metrics.

`train_step` is one step, in that order, each phase timed under its `perf/<phase>_s` key; it
reads the run's fixed parts (`Parts`: config, models, rollout backend, task) and changes only
the run's state (`RunState`, workbench/train/state.py), which is what a checkpoint holds.

Where this departs from the papers (GRPO arXiv:2402.03300, DAPO arXiv:2503.14476), and why:
- Off-policy lag is an explicit axis. Each rollout batch is split into
  `updates_per_rollout / epochs` minibatches and taken `epochs` times, and rollouts come
  from a policy snapshot `rollout_lag` optimizer steps old (as in asynchronous RL). With
  fresh on-policy rollouts r == 1 and no clip bound ever binds, which would make a clip
  ablation meaningless (docs/design.md#two-traps-of-clip-ablations).
- `old_logp` is the trainer's own log_softmax(logits / T) of the snapshot, never an engine
  sampler's: a sampler's log-probs differ from the trainer's forward pass, and that alone would
  move r away from 1. The HF decode loop computes exactly that while sampling (same module,
  same float32 arithmetic), so `rollout.old_logp: auto` takes it from there and skips a second
  forward pass; top-p, another engine or CUDA autocast make the values differ, and then (or
  with `old_logp: recompute`) the snapshot's forward pass recomputes them.
- Log-probs and entropy are taken at the sampling temperature.
- Dynamic sampling (DAPO) drops all-equal groups from the update instead of sampling
  more prompts to refill the batch, so every step costs the same; the share dropped is
  `batch/zero_adv_group_frac`.
- Step numbers count completed rollout batches: training metrics of the first step are
  logged at step 1, the evaluation before any update at step 0.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from statistics import fmean
from typing import Callable

import torch

from workbench import tracking
from workbench.train import checkpoint
from workbench.core.advantages import group_advantages, overlong_penalty, zero_adv_groups
from workbench.train.batching import PackedBatch, pack, response_logp, response_logp_chunked
from workbench.metrics.collapse import detect_collapse
from workbench.config import RunConfig, dump_yaml, flatten
from workbench.errors import UserError, disk_full, first_line, full_reason
from workbench.train.evaluation import evaluate
from workbench.metrics.responses import response_metrics
from workbench.models.policy import build_prompt, is_micro, select_device
from workbench.core.objectives import aggregate, get_spec, objective_terms
from workbench.core.regimes import RegimeAccumulator, logp_coef
from workbench.names import (ENTROPY_MEAN, FAILED, FINISHED, GRAD_NORM, KILLED, KIND_TRAIN, LOGP_MISMATCH_MAX,
                             LOGP_MISMATCH_MEAN, LOSS_POLICY, RATIO_ABS_DEV, RATIO_MAX, RATIO_MEAN, REGIME_STATS,
                             REGIMES, REWARD_MEAN, ROLLOUT_POSITIONS_PER_S, ROLLOUT_TOKENS_PER_S, STEP_S, STOPPED,
                             TAG_COLLAPSE, TAG_COLLAPSE_STEP, TAG_KIND, TRACKING_S, TRAIN_ACCURACY,
                             UPDATE_TOKENS_PER_S, ZERO_ADV_GROUP_FRAC, phase_key, regime_key)
from workbench.train.launch import recipe_tags
from workbench.train.results import RunResult
from workbench.tasks.rewards import RewardPool, score_answer
from workbench.rollout import make_backend
from workbench.rollout.base import Rollouts, Sampling
from workbench.train.sft import warm_start
from workbench.train.snapshots import SnapshotRing
from workbench.train.state import RunState
from workbench.tasks.benchmarks import load_benchmark
from workbench.tasks.micro import build_task


STEP_UPDATE_KEYS = tuple(regime_key(r, s) for r in REGIMES for s in REGIME_STATS) + (
    RATIO_MEAN, RATIO_MAX, RATIO_ABS_DEV, LOSS_POLICY, GRAD_NORM, ENTROPY_MEAN)


class NanLoss(RuntimeError):
    pass


class _StopFlag:
    """First Ctrl-C / SIGTERM: finish the current step, checkpoint, end KILLED. Second: stop now."""

    def __init__(self):
        self.set = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass
class Parts:
    """What a run's steps use and never replace: config, models, rollout engine, task, objective."""

    cfg: RunConfig
    device: torch.device  # set with the model (select_device)
    tok: object  # set with the model (warm_start)
    micro: bool
    benchmarks: dict
    old_policy: torch.nn.Module | None = None  # the lagged snapshot rollouts sample from (the policy without lag)
    backend: object = None
    pool: RewardPool | None = None
    task: object = None
    spec: object = None  # the registered objective
    params: object = None
    agg_mode: str = "token_mean"
    logp_from_rollout: bool = False  # old_logp from the decode loop (see the module docstring)

    def prompt_of(self, question: str) -> str:
        return build_prompt(self.tok, question, self.micro)

    def autocast(self):
        if self.device.type == "cuda" and self.cfg.model.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def close(self) -> None:
        """Give the rollout backend's resources back (a vLLM engine holds GPU memory)."""
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()


def train(config: RunConfig, *, tracking_uri: str | None = None, parent_run_id: str | None = None,
          extra_tags: dict[str, str] | None = None, on_eval: Callable[[int, dict[str, float]], bool] | None = None,
          resume_run_id: str | None = None, progress: bool = True, track: bool = True,
          checkpoint_root: str | None = None) -> RunResult:
    """Run one training run to the end (or until stopped) and return its summary."""
    if config.threads:
        torch.set_num_threads(config.threads)
    # Load (or warm-start) the policy before opening an MLflow run: a model that cannot be
    # found is a user error that must leave nothing in the store.
    parts = Parts(config, device=torch.device("cpu"), tok=None, micro=is_micro(config.model.name),
                  benchmarks=_load_benchmarks(config))
    policy = _load_model(parts)
    tags = {"objective": config.objective.name, "task": config.task.name, "model": config.model.name,
            "git_commit": tracking.git_commit(), TAG_KIND: KIND_TRAIN, **recipe_tags(config), **(extra_tags or {})}
    params = flatten(config.model_dump(mode="python"))
    # The objective's full parameter set, defaults included, so a run reads the same after defaults change.
    resolved = dataclasses.asdict(config.objective.build_params())
    params.update({f"objective.params.{k}": v for k, v in resolved.items()})
    params["objective.aggregation"] = config.objective.aggregation or get_spec(config.objective.name).aggregation
    params.pop("objective.params", None)
    tracker = tracker_class(track)(experiment=config.experiment, run_name=config.resolved_run_name(), tracking_uri=tracking_uri,
                          params=params, tags=tags, artifacts={"config.yaml": dump_yaml(config)},
                          parent_run_id=parent_run_id, resume_run_id=resume_run_id)
    run_id = tracker.run_id
    t0 = time.time()  # wall time counts from the MLflow run's start, so the CLI and the report agree
    state = None
    result = functools.partial(_result, run_id)
    try:
        scorer = functools.partial(score_answer, require_boxed=config.reward_require_boxed)
        with _StopFlag() as stop, RewardPool(workers=config.reward_workers, timeout_s=config.reward_timeout_s,
                                             scorer=scorer) as pool:
            state = setup(parts, policy, pool, t0)
            if resume_run_id is not None:
                state.restore(checkpoint.load(run_id, checkpoint_root), config.updates_per_rollout)
            status = loop(parts, state, tracker, stop, on_eval, progress, run_id, checkpoint_root)
    except NanLoss:
        tracker.set_tags({"nan_loss": "true"})
        tracker.finish(FAILED, "nan_loss")
        return result(state, FAILED, "nan_loss")
    except KeyboardInterrupt:
        tracker.finish(KILLED, "interrupted")
        return result(state, KILLED, "interrupted")
    except BaseException as e:
        if not disk_full(e):
            tracker.finish(FAILED, f"{type(e).__name__}: {e}")
            raise
        # The store may be on the full disk too: end the run FAILED where it still accepts it.
        reason = f"disk full: {full_reason(e)}"
        try:
            tracker.finish(FAILED, reason)
        except Exception as store_error:  # noqa: BLE001 - `dispo-wb runs clean` marks it later
            reason += f" (the run could not be marked FAILED either: {first_line(store_error)})"
        return result(state, FAILED, reason)
    finally:
        parts.close()
    if status == KILLED:
        tracker.finish(KILLED, "interrupted; resume with dispo-wb train --resume " + run_id)
    else:
        tracker.finish(FINISHED)
    return result(state, status)


# ---- set-up ----
def tracker_class(track: bool):
    """Who writes the run: nobody (`track=False`); this process, where it has imported MLflow already (a
    sweep's trial, forked from a server that preloads it: the memory is paid and shared); otherwise a
    child process (`tracking.ChildTracker`), so that the training process never holds MLflow (~140 MB)."""
    if not track:
        return tracking.NullTracker
    return tracking.RunTracker if "mlflow" in sys.modules else tracking.ChildTracker


def _load_benchmarks(cfg: RunConfig) -> dict:
    """Evaluation sets, read before a run is opened: a benchmark that cannot be read is a user error."""
    try:
        return {name: load_benchmark(name, cfg.task, limit=cfg.eval.limit) for name in cfg.eval.benchmarks}
    except ValueError as e:
        raise UserError(f"eval.benchmarks: {e}") from None


def _load_model(parts: Parts) -> torch.nn.Module:
    cfg = parts.cfg
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    try:
        parts.device = select_device(cfg.model)
        model, parts.tok, _ = warm_start(cfg)  # loads the model as is for HF models or sft.enabled: false
    except ValueError as e:  # models.py raises ValueError for names/paths it cannot resolve
        raise UserError(str(e)) from None
    return model.to(parts.device).train()


def setup(parts: Parts, policy: torch.nn.Module, pool: RewardPool, t0: float) -> RunState:
    """Optimizer, snapshot ring, rollout backend and objective; the state a first step starts from."""
    cfg = parts.cfg
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **_fast_adamw(parts.device))
    parts.task = build_task(cfg.task)
    parts.pool = pool
    # Lagged rollouts sample from (and old_logp is computed with) a separate copy holding an old snapshot.
    lag = cfg.rollout_lag
    parts.old_policy = copy.deepcopy(policy).eval() if lag > 0 else policy
    # Only the snapshots a rollout boundary will read; every step's when the update count varies.
    stride = 1 if cfg.dynamic_sampling else cfg.updates_per_rollout
    snapshots = SnapshotRing(lag, stride) if lag > 0 else None
    if snapshots is not None:
        snapshots.record(0, policy)
    parts.backend = make_backend(cfg, parts.old_policy, parts.tok, parts.device)
    parts.spec = get_spec(cfg.objective.name)
    parts.params = cfg.objective.build_params()
    parts.agg_mode = cfg.objective.aggregation or parts.spec.aggregation
    parts.logp_from_rollout = logp_from_rollout(cfg, parts.device)
    return RunState(policy=policy, opt=opt, snapshots=snapshots, task_rng=random.Random(cfg.seed),
                    shuffle=torch.Generator().manual_seed(cfg.seed), t0=t0)


def logp_from_rollout(cfg: RunConfig, device: torch.device) -> bool:
    """Whether `rollout.old_logp: auto` may take old log-probs from the decode loop.

    Only the HF backend's loop computes the trainer's own arithmetic; top-p samples from another
    distribution; under CUDA autocast the trainer's pass runs in bf16 and the loop in the
    weights' dtype. The backend confirms per rollout (`Rollouts.exact_logp`).
    """
    ro = cfg.rollout
    autocast = device.type == "cuda" and cfg.model.autocast
    return ro.old_logp == "auto" and ro.backend == "hf" and ro.top_p >= 1.0 and not autocast


# ---- the loop ----
def loop(parts: Parts, s: RunState, tracker, stop: _StopFlag, on_eval, show_progress: bool, run_id: str,
         checkpoint_root: str | None) -> str:
    cfg = parts.cfg
    if s.step == 0:
        _evaluate(parts, s, tracker, on_eval)
    with _progress(show_progress, cfg.steps, s.step) as bar:
        while s.step < cfg.steps:
            metrics, samples = train_step(parts, s)
            s.step += 1
            t_track = time.perf_counter()
            tracker.log_metrics(metrics, s.step)
            for k in s.history:
                s.history[k].append(metrics.get(k, math.nan))
            if s.step % cfg.sample_every == 0 or s.step == 1:
                tracker.log_table(samples, f"rollouts/step_{s.step:04d}.json")
            # Its own small call: the time of the step's logging is known only once it is done.
            tracker.log_metrics({TRACKING_S: time.perf_counter() - t_track}, s.step)
            stopped = _check_collapse(parts, s, tracker)
            if s.step % cfg.eval.every == 0 or s.step == cfg.steps:
                stopped = _evaluate(parts, s, tracker, on_eval) or stopped
            if s.step % cfg.checkpoint_every == 0 or s.step == cfg.steps or stop.set or stopped:
                checkpoint.save(s.to_checkpoint(), run_id, checkpoint_root, config_yaml=dump_yaml(cfg))
            bar(s.step, metrics, s.last_eval)
            if stopped:
                tracker.set_tags({"stopped_early": "true"})
                return STOPPED
            if stop.set:
                return KILLED
    return FINISHED


def train_step(parts: Parts, s: RunState) -> tuple[dict[str, float], list[dict]]:
    """One rollout batch: rollout -> rewards -> advantages -> old log-probs -> updates -> metrics."""
    cfg, G = parts.cfg, parts.cfg.rollout.group_size
    t_start = time.time()
    clock = _PhaseClock()

    # rollout, from the snapshot `rollout_lag` updates old
    problems = parts.task.train_batch(s.task_rng, cfg.rollout.prompts_per_step)
    prompts = [parts.prompt_of(p.prompt) for p in problems]
    _load_rollout_policy(parts, s)
    parts.backend.wake()
    clock.lap()
    ro = parts.backend.generate(prompts, G, Sampling(
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens,
        logprobs=parts.logp_from_rollout))
    roll_s = clock.lap("generate")
    parts.backend.sleep()

    # rewards
    texts = parts.tok.batch_decode(ro.response_ids, skip_special_tokens=True)
    golds = [p.answer for p in problems for _ in range(G)]
    scored = parts.pool.score(texts, golds)
    clock.lap("reward")
    correct = torch.tensor([r > 0.5 for r in scored.rewards])
    rewards = torch.tensor(scored.rewards, dtype=torch.float32)
    lengths = torch.tensor([len(r) for r in ro.response_ids])
    if cfg.overlong.enabled:
        rewards = rewards + overlong_penalty(lengths, cfg.rollout.max_new_tokens, cfg.overlong.buffer, cfg.overlong.factor)

    # advantages
    adv = group_advantages(rewards, G, cfg.advantage)
    zero_groups = zero_adv_groups(rewards, G)

    # old log-probs: the behaviour policy's, from the decode loop where exact, else a second pass
    batch = pack(ro.prompt_ids, ro.response_ids, parts.tok.pad_token_id, parts.device)
    clock.lap()
    old_logp = behaviour_logp(parts, ro, batch)
    _release_rollout_policy(parts, s)
    clock.lap("old_logp")

    # updates
    keep = torch.arange(len(batch))
    if cfg.dynamic_sampling:
        keep = keep[~zero_groups.repeat_interleave(G)]
    update_metrics = update(parts, s, batch, old_logp, adv.to(parts.device), keep)
    update_s = clock.lap("update")

    # metrics; the same keys every step: a regime with no tokens this step is NaN (undefined), not absent
    metrics = {
        **dict.fromkeys(STEP_UPDATE_KEYS, math.nan), **update_metrics,
        **response_metrics(ro.response_ids, correct.tolist(), ro.finish_reasons),
        **scored.metrics(),
        REWARD_MEAN: rewards.mean().item(),
        TRAIN_ACCURACY: correct.float().mean().item(),
        ZERO_ADV_GROUP_FRAC: zero_groups.float().mean().item(),
        ROLLOUT_TOKENS_PER_S: lengths.sum().item() / max(roll_s, 1e-9),
        # Positions decoded, finished sequences and padding included: B x longest response.
        ROLLOUT_POSITIONS_PER_S: len(lengths) * int(lengths.max()) / max(roll_s, 1e-9),
        **{phase_key(k): v for k, v in clock.laps.items()},
        **_update_throughput(batch, keep, cfg.epochs, update_s),
        STEP_S: time.time() - t_start,
    }
    if ro.sampling_logp is not None and not ro.exact_logp:  # an engine's own log-probs against the trainer's
        metrics.update(_logp_mismatch(ro.sampling_logp, old_logp, batch.mask))
    samples = [{"prompt": problems[i // G].prompt, "response": texts[i], "gold": golds[i],
                "reward": float(rewards[i]), "advantage": float(adv[i]), "length": int(lengths[i]),
                "finish": ro.finish_reasons[i]} for i in range(0, len(texts), max(1, len(texts) // 16))]
    return metrics, samples


def behaviour_logp(parts: Parts, ro: Rollouts, batch: PackedBatch) -> torch.Tensor:
    """(B, T) log-probs of the responses under the policy that sampled them, 0 on padding."""
    if parts.logp_from_rollout and ro.exact_logp:
        return _rows_to_tensor(ro.sampling_logp, batch.mask)
    with parts.autocast():
        return response_logp_chunked(parts.old_policy, batch, parts.cfg.rollout.temperature)


def _rows_to_tensor(rows: list[list[float]], mask: torch.Tensor) -> torch.Tensor:
    """Per-token lists (ragged) as a (B, T) tensor shaped like `mask`, 0 past each row's end."""
    T = mask.shape[1]
    return torch.tensor([row[:T] + [0.0] * (T - len(row[:T])) for row in rows], dtype=torch.float32,
                        device=mask.device)


def update(parts: Parts, s: RunState, batch: PackedBatch, old_logp: torch.Tensor, adv: torch.Tensor,
           keep: torch.Tensor) -> dict[str, float]:
    """`updates_per_rollout` optimizer steps over minibatches of the kept samples.

    old_logp: (B, T); adv: (B,); keep: indices of the rows that take part.
    """
    cfg = parts.cfg
    if len(keep) == 0:  # every group all-equal under dynamic sampling: nothing to learn from
        return {LOSS_POLICY: 0.0, GRAD_NORM: 0.0, ENTROPY_MEAN: math.nan}
    # Regime statistics: token sums over every micro-batch of the step, divided once
    # (workbench.core.regimes); loss and grad norm: mean over optimizer steps.
    regimes = RegimeAccumulator()
    losses: list[float] = []
    gnorms: list[float] = []
    for _ in range(cfg.epochs):
        order = keep[torch.randperm(len(keep), generator=s.shuffle)]
        for idx in torch.tensor_split(order, min(cfg.minibatches, len(order))):
            s.opt.zero_grad(set_to_none=True)
            total = 0.0
            for part, share in _micro_batches(cfg.micro_batch_size, parts.agg_mode, batch, idx):
                mb = batch.select(part)
                with parts.autocast():
                    logp, ent = response_logp(s.policy, mb, cfg.rollout.temperature, with_entropy=True)
                per_token, terms, adv_bt = objective_terms(parts.spec.name, logp, old_logp[part], adv[part],
                                                           mb.mask, parts.params)
                loss = aggregate(per_token, mb.mask, mode=parts.agg_mode) * share
                if not torch.isfinite(loss):
                    raise NanLoss(f"loss is {loss.item()} at step {s.step + 1}")
                regimes.add(terms.ratio, terms.weight, terms.clipped, adv_bt, mb.mask, ent.detach(),
                            logp.detach(), logp_coef(per_token, logp))
                loss.backward()
                total += loss.item()
            gnorm = torch.nn.utils.clip_grad_norm_(s.policy.parameters(), cfg.max_grad_norm)
            s.opt.step()
            s.updates += 1
            if s.snapshots is not None:
                s.snapshots.record(s.updates, s.policy)
            losses.append(total)
            gnorms.append(gnorm.item())
    return {**regimes.result(), LOSS_POLICY: fmean(losses), GRAD_NORM: fmean(gnorms)}


def _micro_batches(size: int | None, agg_mode: str, batch: PackedBatch, idx: torch.Tensor):
    """Split a minibatch for gradient accumulation; each part's loss is scaled by its share
    of the minibatch (tokens for token_mean, sequences otherwise) so the summed gradient
    equals the whole minibatch's."""
    if not size or size >= len(idx):
        yield idx, 1.0
        return
    tokens = batch.mask[idx].sum().clamp(min=1)
    for part in torch.split(idx, size):
        if agg_mode == "token_mean":
            yield part, (batch.mask[part].sum() / tokens).item()
        else:
            yield part, len(part) / len(idx)


def _load_rollout_policy(parts: Parts, s: RunState) -> None:
    """Put the snapshot `rollout_lag` updates old into old_policy and into the rollout engine."""
    if s.snapshots is not None:
        _point_old_policy(parts, s.snapshots.rollout_state(s.updates))
    parts.backend.sync_weights(_named_state(parts.old_policy, getattr(parts.backend, "model", None)))


def _point_old_policy(parts: Parts, state) -> None:
    """On CPU old_policy's weights are the ring's tensors themselves, not a copy of them.

    The snapshots are CPU tensors, so on a GPU they are copied into the device's module. On CPU
    copying would hold one more full copy of the weights for the whole run, so the module's
    parameters are assigned the snapshot's tensors (nothing writes to old_policy).
    """
    parts.old_policy.load_state_dict(state, assign=parts.device.type == "cpu")


def _release_rollout_policy(parts: Parts, s: RunState) -> None:
    """After the old_logp phase nothing reads old_policy until the next boundary reloads it.

    On CPU it is pointed at the newest snapshot (held by the ring anyway), so the state it came
    from is freed as soon as the ring drops it (at the first update), not one rollout later.
    """
    if s.snapshots is not None and parts.device.type == "cpu":
        _point_old_policy(parts, s.snapshots.newest())


# ---- evaluation, collapse, the run's summary ----
def _evaluate(parts: Parts, s: RunState, tracker, on_eval) -> bool:
    cfg = parts.cfg
    parts.backend.sync_weights(_named_state(s.policy, getattr(parts.backend, "model", None)))
    parts.backend.wake()
    metrics: dict[str, float] = {}
    for name, problems in parts.benchmarks.items():
        metrics.update(evaluate(parts.backend, parts.tok, problems, benchmark=name, k=cfg.eval.k,
                                temperature=cfg.eval.temperature, max_new_tokens=cfg.rollout.max_new_tokens,
                                score=lambda t, g: parts.pool.score(t, g).rewards, prompt_of=parts.prompt_of))
    parts.backend.sleep()
    tracker.log_metrics(metrics, s.step)
    s.last_eval = metrics
    for k, v in metrics.items():
        s.best_eval[k] = max(v, s.best_eval.get(k, -math.inf))
    return bool(on_eval and on_eval(s.step, metrics))


def _check_collapse(parts: Parts, s: RunState, tracker) -> bool:
    if s.collapse[0] is not None:
        return False
    verdict = detect_collapse(list(range(1, s.step + 1)), s.history, parts.cfg.collapse)
    if verdict.kind is None:
        return False
    s.collapse = (verdict.kind, verdict.onset_step)
    tracker.set_tags({TAG_COLLAPSE: verdict.kind, TAG_COLLAPSE_STEP: str(verdict.onset_step)})
    return parts.cfg.collapse.stop


def _result(run_id: str, s: RunState | None, status: str, reason: str | None = None) -> RunResult:
    if s is None:  # failed before the first step's state existed
        return RunResult(run_id=run_id, status=status, steps_done=0, wall_s=0.0, final_eval={}, best_eval={},
                         collapse=None, collapse_step=None, entropy_first=math.nan, entropy_last=math.nan, reason=reason)
    ent = [e for e in s.history[ENTROPY_MEAN] if not math.isnan(e)]
    return RunResult(run_id=run_id, status=status, steps_done=s.step, wall_s=time.time() - s.t0,
                     final_eval=dict(s.last_eval), best_eval=dict(s.best_eval), collapse=s.collapse[0],
                     collapse_step=s.collapse[1], entropy_first=fmean(ent[:5]) if ent else math.nan,
                     entropy_last=fmean(ent[-5:]) if ent else math.nan, reason=reason)


class _PhaseClock:
    """Seconds per named phase of a step: `lap(name)` charges the time since the last lap to it."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str | None = None) -> float:
        now = time.perf_counter()
        took, self._t = now - self._t, now
        if name:
            self.laps[name] = self.laps.get(name, 0.0) + took
        return took


def _update_throughput(batch, keep: torch.Tensor, epochs: int, update_s: float) -> dict[str, float]:
    """Response tokens (padding not counted) through forward, backward and optimizer per second."""
    return {UPDATE_TOKENS_PER_S: batch.mask[keep].sum().item() * epochs / max(update_s, 1e-9)}


def _fast_adamw(device: torch.device) -> dict[str, bool]:
    """One fused kernel over all parameters instead of a Python loop per tensor (same update rule)."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}


def _named_state(source: torch.nn.Module, engine_model: torch.nn.Module | None):
    """Weights to push into the rollout engine; none when the engine samples from `source` itself."""
    return [] if source is engine_model else list(source.state_dict().items())


def _logp_mismatch(sampling_logp: list[list[float]], old_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    s = _rows_to_tensor(sampling_logp, mask)
    diff = (s - old_logp).abs() * mask
    return {LOGP_MISMATCH_MEAN: (diff.sum() / mask.sum().clamp(min=1)).item(),
            LOGP_MISMATCH_MAX: diff.max().item()}


class _progress:
    """A rich progress bar with step, reward, accuracy, entropy and ETA (or nothing when quiet)."""

    def __init__(self, show: bool, total: int, start: int):
        self.show, self.total, self.start = show, total, start

    def __enter__(self):
        if not self.show:
            return lambda *a: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                          TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
        self.p.start()
        self.task = self.p.add_task("train", total=self.total, completed=self.start, info="")

        def update(step, m, ev):
            acc = next((v for k, v in ev.items() if k.endswith("/accuracy")), math.nan)
            info = (f"reward {m.get(REWARD_MEAN, math.nan):.2f} train_acc {m.get(TRAIN_ACCURACY, math.nan):.2f} "
                    f"eval {acc:.2f} entropy {m.get(ENTROPY_MEAN, math.nan):.2f}")
            self.p.update(self.task, completed=step, info=info)

        return update

    def __exit__(self, *exc):
        if self.show:
            self.p.stop()
