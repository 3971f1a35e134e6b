"""One trial: sample its point, train every seed in a child process, return the mean values.

- Seeds: one MLflow child run per trial (its params, Optuna state and values, the mean over
  seeds) with one training run per seed nested beneath it. The value belongs to no single
  seed, and the trial run is what MLflow's compare view lines up across the space.
- A collapse-flagged run prunes its trial (the remaining seeds are skipped) unless
  `collapse` is one of the study's directions; then it is a measured outcome.
- Pruning with several seeds: seed i reports at step `i * (steps + 1) + step`, so the pruner
  compares seed i of one trial with seed i of the others.
"""

from __future__ import annotations

import math
from statistics import fmean
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import Trial

from workbench import tracking
from workbench.errors import UserError
from workbench.names import (EVAL_PREFIX, FAILED, KILLED, TAG_ARM, TAG_COLLAPSE, TAG_FAILURE, TAG_OPTUNA_SAMPLER,
                             TAG_PRUNE_REASON, TAG_RETRY_OF, TAG_RETRY_OF_RUN, TAG_SEED, TAG_STUDY, TAG_TRIAL)
from workbench.params import ENGINES
from workbench.train.results import RunResult, TrainFn
from workbench.sweep.looks import trial_seeds
from workbench.sweep.study_file import ARM, Direction
from workbench.sweep.trial import TrialCrashed, run_training

if TYPE_CHECKING:
    from workbench.sweep.workers import WorkerSpec

SWEEP_ENGINES = tuple(e for e in ENGINES if e != "trl")  # trl has no sweep launcher yet


def engine_train_fn(engine: str, local_fn: TrainFn) -> TrainFn:
    """What trains a trial seed on `engine`: `local_fn` for the local trainer, else the engine's job.

    A verl seed runs as one engine job whose outcome is read back from its MLflow run
    (`workbench.engines.verl.launch.train` returns the same RunResult as the trainer).
    """
    if engine == "local":
        return local_fn
    if engine == "verl":
        from workbench.engines.verl.launch import train  # light: verl itself runs in the job

        return train
    raise UserError(f"sweeps do not run on engine {engine} yet; engines for sweeps: {', '.join(SWEEP_ENGINES)}")


def sample_params(trial: Trial, space: dict[str, Any]) -> dict[str, Any]:
    """One value per dimension of `space` (name -> study.Dimension), suggested through `trial`."""
    params: dict[str, Any] = {}
    for name, dim in space.items():
        if dim.choices is not None:
            params[name] = trial.suggest_categorical(name, dim.choices)
        elif dim.integer:
            params[name] = trial.suggest_int(name, dim.low, dim.high, step=dim.step or 1, log=dim.log)
        else:
            params[name] = trial.suggest_float(name, dim.low, dim.high, step=dim.step, log=dim.log)
    return params


def seed_value(direction: Direction, result: RunResult) -> float:
    """What one training run contributes to a direction."""
    if direction.metric == "collapse":
        return float(result.collapse is not None)
    if direction.metric == "entropy_retention":
        first, last = result.entropy_first, result.entropy_last
        return last / first if first and not math.isnan(first) else math.nan
    evals = (result.best_eval if direction.at == "best" else result.final_eval) or {}
    if direction.metric not in evals:
        raise TrialCrashed(f"the run logged no {direction.metric} (it has {', '.join(evals) or 'no eval metrics'})")
    return float(evals[direction.metric])


class TrialObjective:
    """`objective(trial)`: sample, train every seed in a child process, return the mean values."""

    def __init__(self, spec: WorkerSpec, worker: int):
        self.spec, self.study, self.worker = spec, spec.study, worker
        d = self.study.directions
        self.prune_metric = d[0].metric if len(d) == 1 and d[0].metric.startswith(EVAL_PREFIX) else None

    def __call__(self, trial: Trial) -> float | list[float]:
        params = sample_params(trial, self.study.space)
        overrides = self.study.overrides(params)
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("worker", self.worker)
        run_id = tracking.open_trial_run(parent_run_id=self.spec.parent_run_id, study_name=self.study.name,
                                         trial_number=trial.number, tracking_uri=self.spec.tracking_uri,
                                         params={**params, "seeds": ",".join(map(str, trial_seeds(self.study, trial)))},
                                         tags={TAG_OPTUNA_SAMPLER: self.study.sampler, **_retry_tags(trial)})
        trial.set_user_attr("mlflow_run_id", run_id)
        try:
            values = self._train_seeds(trial, overrides, run_id)
        except optuna.TrialPruned as e:
            tracking.close_trial_run(run_id, state="PRUNED", tags=self._tags(trial, str(e)),
                                     tracking_uri=self.spec.tracking_uri)
            raise
        except BaseException as e:
            interrupted = isinstance(e, KeyboardInterrupt)
            why = "interrupted; queued again when the sweep is re-run" if interrupted else f"{type(e).__name__}: {e}"
            trial.set_user_attr("failure", why[-500:])
            tracking.close_trial_run(run_id, state="FAIL", tags={TAG_FAILURE: why[-5000:]},
                                     tracking_uri=self.spec.tracking_uri, killed=interrupted)
            raise
        tracking.close_trial_run(run_id, state="COMPLETE", tags=self._tags(trial, None),
                                 metrics={d.key: v for d, v in zip(self.study.directions, values)},
                                 tracking_uri=self.spec.tracking_uri)
        return values[0] if len(values) == 1 else values

    def _train_seeds(self, trial: Trial, overrides: dict[str, Any], run_id: str) -> list[float]:
        per_seed: dict[str, dict[str, Any]] = {}
        results: list[RunResult] = []
        for i, seed in enumerate(trial_seeds(self.study, trial)):
            # Seed runs are named after their trial (a base `run_name` wins: it is the user's, or a test's knobs).
            named = {} if self.study.base.run_name else {"run_name": f"{self.study.name}-t{trial.number:04d}-s{seed}"}
            config = self.study.run_config({**overrides, **named}, seed, self.spec.threads)
            reporter = _PruneReporter(trial, self.prune_metric, i * (config.steps + 1)) if self.prune_metric else None
            result = run_training(engine_train_fn(config.engine, self.spec.train_fn), config, on_eval=reporter,
                                  tracking_uri=self.spec.tracking_uri, parent_run_id=run_id, progress=False,
                                  extra_tags={TAG_STUDY: self.study.name, TAG_TRIAL: str(trial.number),
                                              TAG_SEED: str(seed), **self._arm_tag(trial)})
            per_seed[str(seed)] = {"run_id": result.run_id, "status": result.status, "collapse": result.collapse,
                                   "collapse_step": result.collapse_step, "final_eval": result.final_eval,
                                   "wall_s": result.wall_s}
            trial.set_user_attr("seeds", per_seed)
            results.append(result)
            if result.status in (FAILED, KILLED):
                raise TrialCrashed(f"seed {seed}: run {result.run_id} ended {result.status}: {result.reason}")
            if result.collapse and self.study.prunes_on_collapse:
                what = f"{result.collapse} collapse at step {result.collapse_step} (seed {seed})"
                trial.set_user_attr("collapse", what)
                raise optuna.TrialPruned(what)
            if result.collapse:
                trial.set_user_attr("collapse", f"{result.collapse} (seed {seed})")
            if reporter is not None and reporter.pruned_at is not None:
                raise optuna.TrialPruned(f"pruned at step {reporter.pruned_at} of seed {seed}")
        values = [fmean(seed_value(d, r) for r in results) for d in self.study.directions]
        if any(math.isnan(v) for v in values):  # Optuna would fail the trial after we closed its run
            raise TrialCrashed(f"a value is NaN: {dict(zip((d.label for d in self.study.directions), values))}")
        return values

    @staticmethod
    def _arm_tag(trial: Trial) -> dict[str, str]:
        """Seed runs of an arm study say their arm, so a claims report needs only the runs."""
        return {TAG_ARM: str(trial.params[ARM])} if ARM in trial.params else {}

    def _tags(self, trial: Trial, reason: str | None) -> dict[str, str]:
        collapse = trial.user_attrs.get("collapse")
        tags = {TAG_COLLAPSE: collapse.split()[0] if collapse else "none"}  # every trial run carries the flag
        if reason:
            tags[TAG_PRUNE_REASON] = reason
        return tags


def _retry_tags(trial: Trial) -> dict[str, str]:
    """A re-queued trial's run names the trial it retries (and that trial's run, when it had one)."""
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is None:
        return {}
    tags = {TAG_RETRY_OF: str(retry_of)}
    for t in trial.study.get_trials(deepcopy=False):
        if t.number == retry_of and "mlflow_run_id" in t.user_attrs:
            tags[TAG_RETRY_OF_RUN] = t.user_attrs["mlflow_run_id"]
    return tags


class _PruneReporter:
    """The trainer's on_eval: report the study's metric to Optuna, say whether to stop."""

    def __init__(self, trial: Trial, metric: str, offset: int):
        self.trial, self.metric, self.offset = trial, metric, offset
        self.pruned_at: int | None = None

    def __call__(self, step: int, metrics: dict[str, float]) -> bool:
        if self.metric not in metrics:
            return False
        self.trial.report(float(metrics[self.metric]), self.offset + step)
        if self.trial.should_prune():
            self.pruned_at = step
            return True
        return False
