"""Held-out avg@k / pass@k inside a TRL run, as the local trainer evaluates: at step 0, every
`eval.every` steps and at the last step, keys `eval/<benchmark>/accuracy|pass_at_<k>`.

Rank 0 samples with transformers' generate on its unwrapped model while the other ranks
wait at their next collective. That needs the whole model on rank 0 (DDP, ZeRO-1/2); under
ZeRO-3 or FSDP parameter sharding set `eval.every` past `steps` and evaluate the saved model
with `dispo-wb eval`.
"""

from __future__ import annotations

import functools
import math

from transformers import TrainerCallback

from workbench import tracking
from workbench.config import RunConfig
from workbench.train.evaluation import evaluate
from workbench.models.policy import build_prompt, is_micro
from workbench.tasks.rewards import RewardPool, score_answer
from workbench.rollout.hf import HFBackend
from workbench.tasks.benchmarks import load_benchmark


class HeldOutEval(TrainerCallback):
    def __init__(self, cfg: RunConfig, tokenizer, run_id: str, tracking_uri: str | None):
        self.cfg, self.tok = cfg, tokenizer
        self.run_id, self.tracking_uri = run_id, tracking_uri
        self.benchmarks = None

    def _run(self, model, step: int) -> None:
        cfg = self.cfg
        if self.benchmarks is None:
            self.benchmarks = {n: load_benchmark(n, cfg.task, limit=cfg.eval.limit) for n in cfg.eval.benchmarks}
        backend = HFBackend(model, self.tok, next(model.parameters()).device)
        micro = is_micro(cfg.model.name)
        scorer = functools.partial(score_answer, require_boxed=cfg.reward_require_boxed)
        metrics: dict[str, float] = {}
        was_training = model.training
        with RewardPool(workers=cfg.reward_workers, timeout_s=cfg.reward_timeout_s, scorer=scorer) as pool:
            for name, problems in self.benchmarks.items():
                metrics.update(evaluate(backend, self.tok, problems, benchmark=name, k=cfg.eval.k,
                                        temperature=cfg.eval.temperature, max_new_tokens=cfg.rollout.max_new_tokens,
                                        score=lambda t, g: pool.score(t, g).rewards,
                                        prompt_of=lambda q: build_prompt(self.tok, q, micro)))
        model.train(was_training)
        tracking.RunTracker.attach(self.run_id, self.tracking_uri).log_metrics(metrics, step)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and self.cfg.eval.benchmarks:
            self._run(model, 0)

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        step = math.ceil(state.global_step / self.cfg.updates_per_rollout)
        if not state.is_world_process_zero or not self.cfg.eval.benchmarks or "train_runtime" in (logs or {}):
            return
        if step % self.cfg.eval.every == 0 or step == self.cfg.steps:
            self._run(model, step)
