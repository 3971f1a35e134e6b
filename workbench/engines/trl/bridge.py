"""TRL's logs into our MLflow run, under our key vocabulary (docs/design.md#metrics).

Only rank 0 writes; the values it writes are already reduced over every rank (TRL gathers
rewards and lengths, our trainer gathers the objective's tokens, `log_metric` sums counts).
Step = rollout batches done, as the local trainer counts. MLflow is reached through
`workbench.tracking` only.
"""

from __future__ import annotations

import math
import re
import time

from transformers import TrainerCallback

from workbench import tracking
from workbench.names import GRAD_NORM, LENGTH_MEAN, REWARD_MEAN, STEP_S, TRUNCATED_FRAC, ZERO_ADV_GROUP_FRAC

# TRL key -> our key; our own keys (regime/..., ratio/..., loss/policy, entropy/mean, response/...,
# train/accuracy, eval/...) pass through; every other TRL key is kept as trl/<key>. TRL's `entropy`
# comes only from its own loss, which our trainer replaces; ours is `entropy/mean` over all ranks.
TRL_KEYS = {
    "reward": REWARD_MEAN,
    "completions/mean_length": LENGTH_MEAN,
    "completions/clipped_ratio": TRUNCATED_FRAC,
    "frac_reward_zero_std": ZERO_ADV_GROUP_FRAC,
    "grad_norm": GRAD_NORM,
}
OWN_PREFIXES = ("regime/", "ratio/", "loss/", "entropy/", "response/", "train/", "reward/", "eval/")


def map_key(key: str) -> str:
    """Our name for a TRL log key.

    >>> map_key("reward"), map_key("regime/neg_up/clip_frac"), map_key("clip_ratio/low_mean"), map_key("Learning Rate")
    ('reward/mean', 'regime/neg_up/clip_frac', 'trl/clip_ratio/low_mean', 'trl/learning_rate')
    """
    if key in TRL_KEYS:
        return TRL_KEYS[key]
    if key.startswith(OWN_PREFIXES):
        return key
    return "trl/" + re.sub(r"[^a-z0-9_/.]+", "_", key.lower())


def map_logs(logs: dict[str, float | None]) -> dict[str, float]:
    """Numeric entries of a TRL `logs` dict under our keys; None (no valid value) is NaN for regime and ratio keys,
    dropped otherwise."""
    out = {}
    for key, value in logs.items():
        name = map_key(key)
        if value is None and name.startswith(("regime/", "ratio/")):
            out[name] = math.nan  # undefined this step (e.g. no token in the regime), as the local trainer logs it
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class MlflowBridge(TrainerCallback):
    """Writes each TRL log (one per rollout batch) into the run `run_id` at our step."""

    def __init__(self, run_id: str, tracking_uri: str | None, updates_per_rollout: int):
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.updates = updates_per_rollout
        self.tracker = None
        self._last = time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.tracker = tracking.RunTracker.attach(self.run_id, tracking_uri=self.tracking_uri)
            self.tracker.set_tags({"trl.world_size": args.world_size})
        self._last = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.tracker is None or not logs:
            return
        now = time.time()
        metrics = {k: v for k, v in map_logs(logs).items() if not math.isinf(v)}
        if "train_runtime" not in logs:  # the closing summary is not a step
            metrics[STEP_S] = (now - self._last) / max(args.logging_steps // self.updates, 1)
        self._last = now
        self.tracker.log_metrics(metrics, step=math.ceil(state.global_step / self.updates))
