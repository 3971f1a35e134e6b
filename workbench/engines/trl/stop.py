"""A collapse ends a TRL run as it ends a local one: `CollapseStop`, a `TrainerCallback`.

Every process sees the same logs (TRL's reward and length metrics and our regime metrics are
reduced over all ranks before `log`), so every process reaches the same verdict at the same
step and all of them stop together: one rank stopping alone would leave the others waiting in
a collective. Detection is `workbench.metrics.collapse.detect_collapse` on the logged series,
with the run's `collapse` settings. Rank 0 tags the run as the local trainer does
(`collapse`, `collapse_step`, and `stopped_early` when it ends the run). A resumed run first
reads the series it logged before, so patience counts across the restart.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback

from workbench.config import RunConfig
from workbench.engines.trl.bridge import map_logs
from workbench.metrics.collapse import SIGNALS, detect_collapse
from workbench.names import TAG_COLLAPSE, TAG_COLLAPSE_STEP, TAG_STOPPED_EARLY


class CollapseStop(TrainerCallback):
    def __init__(self, cfg: RunConfig, run_id: str | None = None, tracking_uri: str | None = None):
        self.cfg, self.run_id, self.tracking_uri = cfg, run_id, tracking_uri
        self.steps: list[int] = []
        self.series: dict[str, list[float]] = {k: [] for k in SIGNALS.values()}
        self.collapse: tuple[str, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step and self.run_id:  # resumed: the series so far are in the run
            from workbench import tracking

            done = math.ceil(state.global_step / self.cfg.updates_per_rollout)
            stored = tracking.metric_histories(self.run_id, list(SIGNALS.values()), self.tracking_uri)
            by_key = {k: dict(v) for k, v in stored.items()}
            self.steps = sorted({s for v in stored.values() for s, _ in v if s <= done})
            self.series = {k: [by_key.get(k, {}).get(s, math.nan) for s in self.steps] for k in SIGNALS.values()}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_runtime" in logs or self.collapse is not None:
            return control
        mapped = map_logs(logs)
        self.steps.append(math.ceil(state.global_step / self.cfg.updates_per_rollout))
        for key in SIGNALS.values():
            self.series[key].append(mapped.get(key, math.nan))
        verdict = detect_collapse(self.steps, self.series, self.cfg.collapse)
        if verdict.kind is None:
            return control
        self.collapse = (verdict.kind, verdict.onset_step)
        stop = self.cfg.collapse.stop
        if state.is_world_process_zero and self.run_id:
            from workbench import tracking

            tags = {TAG_COLLAPSE: verdict.kind, TAG_COLLAPSE_STEP: str(verdict.onset_step)}
            tracking.set_run_tags(self.run_id, {**tags, **({TAG_STOPPED_EARLY: "true"} if stop else {})}, self.tracking_uri)
        if stop:
            control.should_training_stop = True
        return control
