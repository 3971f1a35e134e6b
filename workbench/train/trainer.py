"""The RL loop: rollout -> rewards -> advantages -> off-policy minibatch updates -> metrics.

Where this departs from a textbook GRPO step, and why:
- Off-policy lag is an explicit axis. Each rollout batch is split into
  `updates_per_rollout / epochs` minibatches and taken `epochs` times, and rollouts come
  from a policy snapshot `rollout_lag` optimizer steps old (as in asynchronous RL). With
  fresh on-policy rollouts r == 1 and no clip bound ever binds, which would make a clip
  ablation meaningless (DESIGN.md section 1).
- `old_logp` is recomputed with the snapshot's weights by the same forward code as `logp`,
  never taken from the sampler: a sampler's log-probs differ from the trainer's forward
  pass, and that alone would move r away from 1.
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
import time
from statistics import fmean
from typing import Callable

import torch

from workbench import tracking
from workbench.train import checkpoint
from workbench.core.advantages import group_advantages, overlong_penalty, zero_adv_groups
from workbench.train.batching import pack, response_logp, response_logp_chunked
from workbench.metrics.collapse import SIGNALS as COLLAPSE_SIGNALS, detect_collapse
from workbench.config import RunConfig, dump_yaml, flatten
from workbench.errors import UserError, disk_full, first_line
from workbench.train.evaluation import evaluate
from workbench.metrics.responses import response_metrics
from workbench.models.policy import build_prompt, is_micro, select_device
from workbench.core.objectives import aggregate, get_spec
from workbench.names import (ENTROPY_MEAN, FAILED, FINISHED, GRAD_NORM, KILLED, KIND_TRAIN, LOGP_MISMATCH_MAX,
                             LOGP_MISMATCH_MEAN, LOSS_POLICY, RATIO_ABS_DEV, RATIO_MAX, RATIO_MEAN, REGIME_STATS,
                             REGIMES, REWARD_MEAN, ROLLOUT_POSITIONS_PER_S, ROLLOUT_TOKENS_PER_S, STEP_S, STOPPED,
                             TAG_COLLAPSE, TAG_COLLAPSE_STEP, TAG_KIND, TRACKING_S, TRAIN_ACCURACY,
                             UPDATE_TOKENS_PER_S, ZERO_ADV_GROUP_FRAC, phase_key, regime_key)
from workbench.train.launch import recipe_tags
from workbench.train.results import RunResult
from workbench.tasks.rewards import RewardPool, score_answer
from workbench.rollout import make_backend
from workbench.rollout.base import Sampling
from workbench.train.sft import warm_start
from workbench.train.snapshots import SnapshotRing, cpu_state
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


def train(config: RunConfig, *, tracking_uri: str | None = None, parent_run_id: str | None = None,
          extra_tags: dict[str, str] | None = None, on_eval: Callable[[int, dict[str, float]], bool] | None = None,
          resume_run_id: str | None = None, progress: bool = True, track: bool = True,
          checkpoint_root: str | None = None) -> RunResult:
    """Run one training run to the end (or until stopped) and return its summary."""
    if config.threads:
        torch.set_num_threads(config.threads)
    run = _Run(config, checkpoint_root)
    # Load (or warm-start) the policy before opening an MLflow run: a model that cannot be
    # found is a user error that must leave nothing in the store.
    run.load_benchmarks()
    run.load_model()
    tags = {"objective": config.objective.name, "task": config.task.name, "model": config.model.name,
            "git_commit": tracking.git_commit(), TAG_KIND: KIND_TRAIN, **recipe_tags(config), **(extra_tags or {})}
    params = flatten(config.model_dump(mode="python"))
    # The objective's full parameter set, defaults included, so a run reads the same after defaults change.
    resolved = dataclasses.asdict(config.objective.build_params())
    params.update({f"objective.params.{k}": v for k, v in resolved.items()})
    params["objective.aggregation"] = config.objective.aggregation or get_spec(config.objective.name).aggregation
    params.pop("objective.params", None)
    tracker_cls = tracking.RunTracker if track else tracking.NullTracker
    tracker = tracker_cls(experiment=config.experiment, run_name=config.resolved_run_name(), tracking_uri=tracking_uri,
                          params=params, tags=tags, artifacts={"config.yaml": dump_yaml(config)},
                          parent_run_id=parent_run_id, resume_run_id=resume_run_id)
    run.run_id = tracker.run_id
    run.t0 = time.time()  # wall time counts from the MLflow run's start, so the CLI and the report agree
    try:
        scorer = functools.partial(score_answer, require_boxed=config.reward_require_boxed)
        with _StopFlag() as stop, RewardPool(workers=config.reward_workers, timeout_s=config.reward_timeout_s,
                                             scorer=scorer) as pool:
            run.setup(pool, resume=resume_run_id is not None)
            status = run.loop(tracker, stop, on_eval, progress)
    except NanLoss:
        tracker.set_tags({"nan_loss": "true"})
        tracker.finish(FAILED, "nan_loss")
        return run.result(FAILED, "nan_loss")
    except KeyboardInterrupt:
        tracker.finish(KILLED, "interrupted")
        return run.result(KILLED, "interrupted")
    except BaseException as e:
        if not disk_full(e):
            tracker.finish(FAILED, f"{type(e).__name__}: {e}")
            raise
        # The store may be on the full disk too: end the run FAILED where it still accepts it.
        reason = f"disk full: {first_line(e)}"
        try:
            tracker.finish(FAILED, reason)
        except Exception as store_error:  # noqa: BLE001 - `dispo-wb runs clean` marks it later
            reason += f" (the run could not be marked FAILED either: {first_line(store_error)})"
        return run.result(FAILED, reason)
    finally:
        run.close()
    if status == KILLED:
        tracker.finish(KILLED, "interrupted; resume with dispo-wb train --resume " + run.run_id)
    else:
        tracker.finish(FINISHED)
    return run.result(status)


class _Run:
    """State of one run; methods are the phases of a step."""

    def __init__(self, config: RunConfig, checkpoint_root: str | None):
        self.cfg = config
        self.ckpt_root = checkpoint_root
        self.run_id = ""
        self.step = 0
        self.t0 = time.time()
        self.history: dict[str, list[float]] = {ENTROPY_MEAN: [], **{k: [] for k in COLLAPSE_SIGNALS.values()}}
        self.last_eval: dict[str, float] = {}
        self.best_eval: dict[str, float] = {}
        self.collapse: tuple[str | None, int | None] = (None, None)

    # ---- set-up ----
    def load_model(self) -> None:
        cfg = self.cfg
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        try:
            self.device = select_device(cfg.model)
            model, self.tok, _ = warm_start(cfg)  # loads the model as is for HF models or sft.enabled: false
        except ValueError as e:  # models.py raises ValueError for names/paths it cannot resolve
            raise UserError(str(e)) from None
        self.policy = model.to(self.device).train()
        self.micro = is_micro(cfg.model.name)

    def load_benchmarks(self) -> None:
        """Evaluation sets, read before a run is opened: a benchmark that cannot be read is a user error."""
        cfg = self.cfg
        try:
            self.benchmarks = {name: load_benchmark(name, cfg.task, limit=cfg.eval.limit) for name in cfg.eval.benchmarks}
        except ValueError as e:
            raise UserError(f"eval.benchmarks: {e}") from None

    def close(self) -> None:
        """Give the rollout backend's resources back (a vLLM engine holds GPU memory)."""
        backend = getattr(self, "backend", None)
        if backend is not None:
            self.backend = None
            backend.close()

    def setup(self, pool: RewardPool, resume: bool) -> None:
        cfg = self.cfg
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     **_fast_adamw(self.device))
        self.task = build_task(cfg.task)
        self.task_rng = random.Random(cfg.seed)
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.pool = pool
        # Lagged rollouts sample from (and old_logp is computed with) a separate copy holding an old snapshot.
        lag = cfg.rollout_lag
        self.old_policy = copy.deepcopy(self.policy).eval() if lag > 0 else self.policy
        # Only the snapshots a rollout boundary will read; every step's when the update count varies.
        stride = 1 if cfg.dynamic_sampling else cfg.updates_per_rollout
        self.snapshots = SnapshotRing(lag, stride) if lag > 0 else None
        self.updates = 0  # optimizer steps taken
        if self.snapshots is not None:
            self.snapshots.record(0, self.policy)
        self.backend = make_backend(cfg, self.old_policy, self.tok, self.device)
        self.spec = get_spec(cfg.objective.name)
        self.params = cfg.objective.build_params()
        self.agg_mode = cfg.objective.aggregation or self.spec.aggregation
        if resume:
            self._restore(checkpoint.load(self.run_id, self.ckpt_root))

    def prompt_of(self, question: str) -> str:
        return build_prompt(self.tok, question, self.micro)

    # ---- the loop ----
    def loop(self, tracker, stop: _StopFlag, on_eval, show_progress: bool) -> str:
        cfg = self.cfg
        if self.step == 0:
            self._evaluate(tracker, on_eval)
        with _progress(show_progress, cfg.steps, self.step) as bar:
            while self.step < cfg.steps:
                metrics, samples = self.train_step()
                self.step += 1
                t_track = time.perf_counter()
                tracker.log_metrics(metrics, self.step)
                for k in self.history:
                    self.history[k].append(metrics.get(k, math.nan))
                if self.step % cfg.sample_every == 0 or self.step == 1:
                    tracker.log_table(samples, f"rollouts/step_{self.step:04d}.json")
                # Its own small call: the time of the step's logging is known only once it is done.
                tracker.log_metrics({TRACKING_S: time.perf_counter() - t_track}, self.step)
                stopped = self._check_collapse(tracker)
                if self.step % cfg.eval.every == 0 or self.step == cfg.steps:
                    stopped = self._evaluate(tracker, on_eval) or stopped
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or stop.set or stopped:
                    checkpoint.save(self._state(), self.run_id, self.ckpt_root, config_yaml=dump_yaml(cfg))
                bar(self.step, metrics, self.last_eval)
                if stopped:
                    tracker.set_tags({"stopped_early": "true"})
                    return STOPPED
                if stop.set:
                    return KILLED
        return FINISHED

    def train_step(self) -> tuple[dict[str, float], list[dict]]:
        cfg = self.cfg
        t_start = time.time()
        clock = _PhaseClock()
        problems = self.task.train_batch(self.task_rng, cfg.rollout.prompts_per_step)
        prompts = [self.prompt_of(p.prompt) for p in problems]
        self._load_rollout_policy()
        self.backend.wake()
        clock.lap()
        ro = self.backend.generate(prompts, cfg.rollout.group_size, Sampling(
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens))
        roll_s = clock.lap("generate")
        self.backend.sleep()
        texts = self.tok.batch_decode(ro.response_ids, skip_special_tokens=True)
        golds = [p.answer for p in problems for _ in range(cfg.rollout.group_size)]
        scored = self.pool.score(texts, golds)
        clock.lap("reward")
        correct = torch.tensor([r > 0.5 for r in scored.rewards])
        rewards = torch.tensor(scored.rewards, dtype=torch.float32)
        lengths = torch.tensor([len(r) for r in ro.response_ids])
        if cfg.overlong.enabled:
            rewards = rewards + overlong_penalty(lengths, cfg.rollout.max_new_tokens, cfg.overlong.buffer, cfg.overlong.factor)
        G = cfg.rollout.group_size
        adv = group_advantages(rewards, G, cfg.advantage)
        zero_groups = zero_adv_groups(rewards, G)

        batch = pack(ro.prompt_ids, ro.response_ids, self.tok.pad_token_id, self.device)
        clock.lap()
        with self._autocast():
            old_logp = response_logp_chunked(self.old_policy, batch, cfg.rollout.temperature)
        self._release_rollout_policy()
        clock.lap("old_logp")
        keep = torch.arange(len(batch))
        if cfg.dynamic_sampling:
            keep = keep[~zero_groups.repeat_interleave(G)]
        update_metrics = self._update(batch, old_logp, adv.to(self.device), keep)
        update_s = clock.lap("update")
        # Same keys every step: a regime with no tokens this step is NaN (undefined), not absent.
        update_metrics = {**dict.fromkeys(STEP_UPDATE_KEYS, math.nan), **update_metrics}

        metrics = {
            **update_metrics,
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
        if ro.sampling_logp is not None:
            metrics.update(_logp_mismatch(ro.sampling_logp, old_logp, batch.mask))
        samples = [{"prompt": problems[i // G].prompt, "response": texts[i], "gold": golds[i],
                    "reward": float(rewards[i]), "advantage": float(adv[i]), "length": int(lengths[i]),
                    "finish": ro.finish_reasons[i]} for i in range(0, len(texts), max(1, len(texts) // 16))]
        return metrics, samples

    def _update(self, batch, old_logp, adv, keep: torch.Tensor) -> dict[str, float]:
        """`updates_per_rollout` optimizer steps over minibatches of the kept samples."""
        cfg = self.cfg
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        maxes: dict[str, float] = {}
        if len(keep) == 0:  # every group all-equal under dynamic sampling: nothing to learn from
            return {LOSS_POLICY: 0.0, GRAD_NORM: 0.0, ENTROPY_MEAN: math.nan}
        def record(m: dict[str, float]) -> None:
            for k, v in m.items():
                if math.isnan(v):  # a regime absent from a minibatch has no mean there
                    continue
                if k.endswith("/max"):
                    maxes[k] = max(v, maxes.get(k, -math.inf))
                else:
                    sums[k] = sums.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0) + 1

        for _ in range(cfg.epochs):
            order = keep[torch.randperm(len(keep), generator=self.shuffle)]
            for idx in torch.tensor_split(order, min(cfg.minibatches, len(order))):
                self.opt.zero_grad(set_to_none=True)
                total = 0.0
                for part, share in self._micro_batches(batch, idx):
                    mb = batch.select(part)
                    with self._autocast():
                        logp, ent = response_logp(self.policy, mb, cfg.rollout.temperature, with_entropy=True)
                    per_token, m = self.spec.fn(logp, old_logp[part], adv[part], mb.mask, self.params, entropy=ent)
                    loss = aggregate(per_token, mb.mask, mode=self.agg_mode) * share
                    if not torch.isfinite(loss):
                        raise NanLoss(f"loss is {loss.item()} at step {self.step + 1}")
                    loss.backward()
                    total += loss.item()
                    m[ENTROPY_MEAN] = ((ent * mb.mask).sum() / mb.mask.sum().clamp(min=1)).item()
                    record(m)
                gnorm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.opt.step()
                self.updates += 1
                if self.snapshots is not None:
                    self.snapshots.record(self.updates, self.policy)
                record({LOSS_POLICY: total, GRAD_NORM: gnorm.item()})
        return {**{k: sums[k] / counts[k] for k in sums}, **maxes}

    def _micro_batches(self, batch, idx: torch.Tensor):
        """Split a minibatch for gradient accumulation; each part's loss is scaled by its share
        of the minibatch (tokens for token_mean, sequences otherwise) so the summed gradient
        equals the whole minibatch's."""
        size = self.cfg.micro_batch_size
        if not size or size >= len(idx):
            yield idx, 1.0
            return
        tokens = batch.mask[idx].sum().clamp(min=1)
        for part in torch.split(idx, size):
            if self.agg_mode == "token_mean":
                yield part, (batch.mask[part].sum() / tokens).item()
            else:
                yield part, len(part) / len(idx)

    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.model.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _load_rollout_policy(self) -> None:
        """Put the snapshot `rollout_lag` updates old into old_policy and into the rollout engine."""
        if self.snapshots is not None:
            self._point_old_policy(self.snapshots.rollout_state(self.updates))
        self.backend.sync_weights(_named_state(self.old_policy, getattr(self.backend, "model", None)))

    def _point_old_policy(self, state) -> None:
        """On CPU old_policy's weights are the ring's tensors themselves, not a copy of them.

        The snapshots are CPU tensors, so on a GPU they are copied into the device's module. On CPU
        copying would hold one more full copy of the weights for the whole run, so the module's
        parameters are assigned the snapshot's tensors (nothing writes to old_policy).
        """
        self.old_policy.load_state_dict(state, assign=self.device.type == "cpu")

    def _release_rollout_policy(self) -> None:
        """After the old_logp pass nothing reads old_policy until the next boundary reloads it.

        On CPU it is pointed at the newest snapshot (held by the ring anyway), so the state it came
        from is freed as soon as the ring drops it (at the first update), not one rollout later.
        """
        if self.snapshots is not None and self.device.type == "cpu":
            self._point_old_policy(self.snapshots.newest())

    # ---- evaluation, collapse, checkpoints ----
    def _evaluate(self, tracker, on_eval) -> bool:
        cfg = self.cfg
        self.backend.sync_weights(_named_state(self.policy, getattr(self.backend, "model", None)))
        self.backend.wake()
        metrics: dict[str, float] = {}
        for name, problems in self.benchmarks.items():
            metrics.update(evaluate(self.backend, self.tok, problems, benchmark=name, k=cfg.eval.k,
                                    temperature=cfg.eval.temperature, max_new_tokens=cfg.rollout.max_new_tokens,
                                    score=lambda t, g: self.pool.score(t, g).rewards, prompt_of=self.prompt_of))
        self.backend.sleep()
        tracker.log_metrics(metrics, self.step)
        self.last_eval = metrics
        for k, v in metrics.items():
            self.best_eval[k] = max(v, self.best_eval.get(k, -math.inf))
        return bool(on_eval and on_eval(self.step, metrics))

    def _check_collapse(self, tracker) -> bool:
        if self.collapse[0] is not None:
            return False
        steps = list(range(1, self.step + 1))
        verdict = detect_collapse(steps, self.history, self.cfg.collapse)
        if verdict.kind is None:
            return False
        self.collapse = (verdict.kind, verdict.onset_step)
        tracker.set_tags({TAG_COLLAPSE: verdict.kind, TAG_COLLAPSE_STEP: str(verdict.onset_step)})
        return self.cfg.collapse.stop

    def _state(self) -> dict:
        # What resume needs and nothing else; the snapshot taken at this very step is the policy
        # itself, stored once (torch.save keeps one copy of an object referenced twice).
        policy = cpu_state(self.policy)
        snaps = [(c, policy if c == self.updates else st) for c, st in self.snapshots.state_dict()] if self.snapshots is not None else []
        return {"step": self.step, "updates": self.updates, "policy": policy, "opt": self.opt.state_dict(),
                "snapshots": snaps, "torch_rng": torch.get_rng_state(), "py_rng": random.getstate(),
                "task_rng": self.task_rng.getstate(), "shuffle": self.shuffle.get_state(), "history": self.history,
                "last_eval": self.last_eval, "best_eval": self.best_eval, "collapse": self.collapse,
                "elapsed": time.time() - self.t0}

    def _restore(self, s: dict) -> None:
        self.step = s["step"]
        self.policy.load_state_dict(s["policy"])
        self.opt.load_state_dict(s["opt"])
        self.updates = s.get("updates", self.step * self.cfg.updates_per_rollout)
        if self.snapshots is not None:
            snaps = s["snapshots"]
            if snaps and isinstance(snaps[0], dict):  # older checkpoints: one state per step, newest last
                snaps = list(zip(range(self.updates - len(snaps) + 1, self.updates + 1), snaps))
            self.snapshots.load_state_dict((c, st) for c, st in snaps if self.snapshots.needed(c))
        torch.set_rng_state(s["torch_rng"])
        random.setstate(s["py_rng"])
        self.task_rng.setstate(s["task_rng"])
        self.shuffle.set_state(s["shuffle"])
        self.history, self.last_eval, self.best_eval = s["history"], s["last_eval"], s["best_eval"]
        for k in COLLAPSE_SIGNALS.values():  # a checkpoint from before a criterion existed: unmeasured steps
            self.history.setdefault(k, [math.nan] * self.step)
        self.collapse = tuple(s["collapse"])
        self.t0 = time.time() - s["elapsed"]

    def result(self, status: str, reason: str | None = None) -> RunResult:
        ent = [e for e in self.history[ENTROPY_MEAN] if not math.isnan(e)]
        return RunResult(run_id=self.run_id, status=status, steps_done=self.step, wall_s=time.time() - self.t0,
                         final_eval=dict(self.last_eval), best_eval=dict(self.best_eval), collapse=self.collapse[0],
                         collapse_step=self.collapse[1], entropy_first=fmean(ent[:5]) if ent else math.nan,
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
    T = mask.shape[1]
    s = torch.tensor([row[:T] + [0.0] * (T - len(row[:T])) for row in sampling_logp], device=old_logp.device)
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
