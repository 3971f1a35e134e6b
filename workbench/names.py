"""The workbench's vocabulary: regime names, metric keys, MLflow tag names and run statuses.

A bottom module: it imports nothing from the workbench, nor torch, transformers or mlflow, so
the trainer, the sweep, the tracking layer, the report and the tests spell every key, tag and
status through it (docs/design.md#metrics) and a rename is one edit.
"""

from __future__ import annotations

# --- regimes and metric keys ---------------------------------------------------------------------

# DISPO's four regimes: sign of the advantage (pos: correct, neg: incorrect) x weight up or down.
REGIMES: tuple[str, ...] = ("pos_up", "pos_down", "neg_up", "neg_down")
# The entropy push (workbench.core.regimes): first-order entropy change of the step carried by the
# regime's tokens (positive: entropy up), and the part of it carried by its clipped tokens.
ENTROPY_PUSH, ENTROPY_PUSH_CLIPPED = "entropy_push", "entropy_push_clipped"
REGIME_STATS: tuple[str, ...] = ("token_frac", "clip_frac", "weight_mean", "clip_mass", "entropy",
                                 ENTROPY_PUSH, ENTROPY_PUSH_CLIPPED)


def regime_key(regime: str, stat: str) -> str:
    """`regime/<regime>/<stat>`, e.g. regime_key("neg_up", "clip_frac")."""
    return f"regime/{regime}/{stat}"


def benchmark_key(name: str) -> str:
    """Benchmark name as it appears in metric keys (`^[a-z0-9_/.]+$`): `file:a/b.jsonl` -> `file_a_b.jsonl`."""
    return "".join(c if c.isalnum() or c in "_." else "_" for c in name.lower())


def eval_key(benchmark: str, stat: str) -> str:
    """`eval/<benchmark>/<stat>` with the benchmark name made key-safe: stat is accuracy or pass_at_<k>."""
    return f"eval/{benchmark_key(benchmark)}/{stat}"


def pass_at(k: int) -> str:
    return f"pass_at_{k}"


REGIME_PREFIX = "regime/"  # every regime_key starts so
EVAL_PREFIX = "eval/"  # every eval_key starts so

# Per-step keys that are not built from a regime or a benchmark.
ENTROPY_MEAN = "entropy/mean"  # from full logits at the sampling temperature
LOSS_POLICY = "loss/policy"
GRAD_NORM = "grad/norm"
RATIO_MEAN, RATIO_MAX = "ratio/mean", "ratio/max"
RATIO_ABS_DEV = "ratio/abs_dev_mean"  # mean |r - 1| over off-policy tokens
LENGTH_MEAN = "response/length_mean"
LENGTH_CORRECT = "response/length_correct"
LENGTH_INCORRECT = "response/length_incorrect"
TRUNCATED_FRAC = "response/truncated_frac"
REPETITION_RATE = "response/repetition_rate"
REWARD_MEAN = "reward/mean"
REWARD_TIMEOUT_FRAC = "reward/timeout_frac"
REWARD_CRASH_FRAC = "reward/crash_frac"
TRAIN_ACCURACY = "train/accuracy"
ZERO_ADV_GROUP_FRAC = "batch/zero_adv_group_frac"
LOGP_MISMATCH_MEAN, LOGP_MISMATCH_MAX = "rollout/logp_mismatch_mean", "rollout/logp_mismatch_max"
ROLLOUT_TOKENS_PER_S = "perf/rollout_tokens_per_s"
ROLLOUT_POSITIONS_PER_S = "perf/rollout_positions_per_s"  # B x longest response, padding included
UPDATE_TOKENS_PER_S = "perf/update_tokens_per_s"
STEP_S = "perf/step_s"
TRACKING_S = "perf/tracking_s"

# What a sweep logs per trial and on its study's parent run.
COLLAPSE_RATE = "collapse/rate"  # share of a trial's seeds that collapsed
ENTROPY_RETENTION = "entropy/retention"
BEST_PREFIX = "best/"  # best_key("eval/micro/accuracy"): the best evaluation over a run
BEST_VALUE, BEST_TRIAL = "best/value", "best/trial"


def best_key(key: str) -> str:
    return f"{BEST_PREFIX}{key}"


def phase_key(phase: str) -> str:
    """`perf/<phase>_s`: seconds a step spent in one phase (generate, reward, old_logp, update)."""
    return f"perf/{phase}_s"


# --- MLflow tags ---------------------------------------------------------------------------------

TAG_KIND = "dispo.kind"  # train | study | trial
TAG_STUDY = "dispo.study"
TAG_TRIAL = "dispo.trial"
TAG_SEED = "dispo.seed"
TAG_ARM = "dispo.arm"  # a seed run of an arm study: the arm its trial trained
TAG_CLAIMS = "dispo.claims"  # a study's parent run: the claims it declared, as JSON
TAG_STATE = "dispo.state"  # a trial run's Optuna state
TAG_DIRECTIONS = "dispo.directions"
TAG_SEEDS = "dispo.seeds"
TAG_COMPLETE = "dispo.complete"
TAG_BEST_TRIAL = "dispo.best_trial"  # a study's parent run: its best trial (one direction) ...
TAG_BEST_PARAMS = "dispo.best_params"
TAG_BEST_VALUE = "dispo.best_value"
TAG_PARETO_TRIALS = "dispo.pareto_trials"  # ... or its Pareto front (several directions)
TAG_RETRY_OF = "dispo.retry_of"  # a re-queued trial's run: the trial it retries, and that trial's run
TAG_RETRY_OF_RUN = "dispo.retry_of_run"
TAG_PRUNE_REASON = "prune_reason"
TAG_PID = "dispo.pid"  # the process that writes a training run, to tell a dead run from a live one
TAG_HOST = "dispo.host"
TAG_PROC_START = "dispo.proc_start"  # that process's start time (ticks since boot), against pid reuse
TAG_REPORT_DIGEST = "dispo.report_digest"  # content digest of the report uploaded to a run
TAG_PARENT = "mlflow.parentRunId"
TAG_FAILURE = "failure_reason"
TAG_RECIPE = "dispo.recipe"  # the recipe a run is measured against (workbench.recipes)
TAG_RECIPE_DIFF = "dispo.recipe_diff"  # the parts of it the run does not follow; "" when none
TAG_COLLAPSE = "collapse"
TAG_STOPPED_EARLY = "stopped_early"  # a run ended early by on_eval or a collapse stop
TAG_COLLAPSE_STEP = "collapse_step"
TAG_OPTUNA_STORAGE = "optuna.storage"
TAG_OPTUNA_SAMPLER = "optuna.sampler"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow 3 opens an experiment without it in its GenAI view

KIND_TRAIN, KIND_STUDY, KIND_TRIAL = "train", "study", "trial"

# --- run statuses ----------------------------------------------------------------------------------

RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"
STOPPED = "STOPPED"  # a RunResult only: ended early by on_eval or a collapse stop; MLflow records FINISHED
