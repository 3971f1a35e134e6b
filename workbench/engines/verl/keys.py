"""verl's metric keys -> the workbench's (docs/design.md#metrics), one training step at a time.

verl's MLflow logger writes its own keys into the run (with `@` as `_at_`). After a verl run
(and while a sweep polls it) `translate_step` adds ours to the same run, so collapse
detection, `dispo-wb report` and sweeps read a verl run like a local one:

    actor/wb/...                      token sums (workbench.core.regimes.regime_sums) -> regime/<r>/token_frac,
                                      clip_frac, weight_mean, clip_mass, entropy_push, entropy_push_clipped;
                                      ratio/mean, ratio/abs_dev_mean
    actor/pg_loss                     loss/policy
    actor/grad_norm                   grad/norm
    actor/entropy                     entropy/mean
    critic/score/mean                 reward/mean, and train/accuracy (rewards are 1 correct / 0 wrong)
    response_length/mean              response/length_mean
    response_length/clip_ratio        response/truncated_frac
    timing_s/step                     perf/step_s
    val-core/<b>/reward/mean_at_<k>   eval/<b>/accuracy (avg@k)
    val-core/<b>/reward/best_at_<k>/mean  eval/<b>/pass_at_<k> (verl estimates it by bootstrap)

Not produced by verl, so absent from a verl run: `response/repetition_rate` (collapse detection
sees length collapses only), `response/length_correct|incorrect`, per-regime entropy, `ratio/max`
(a maximum does not survive verl's averaging of micro-batch metrics).
"""

from __future__ import annotations

import re

from workbench.names import (ENTROPY_MEAN, GRAD_NORM, LENGTH_MEAN, LOSS_POLICY, REWARD_MEAN, STEP_S, TRAIN_ACCURACY,
                             TRUNCATED_FRAC, eval_key, pass_at)
from workbench.core.regimes import metrics_from_sums

METRIC_PREFIX = "actor/wb/"  # what the wb_* losses prefix their sums with

PLAIN = {
    "actor/pg_loss": (LOSS_POLICY,),
    "actor/grad_norm": (GRAD_NORM,),
    "actor/entropy": (ENTROPY_MEAN,),
    "critic/score/mean": (REWARD_MEAN, TRAIN_ACCURACY),
    "response_length/mean": (LENGTH_MEAN,),
    "response_length/clip_ratio": (TRUNCATED_FRAC,),
    "timing_s/step": (STEP_S,),
}
_EVAL = re.compile(r"^val-core/(?P<bench>[^/]+)/reward/(?:mean(?:@|_at_)(?P<k>\d+)|best(?:@|_at_)(?P<kb>\d+)/mean)$")


def translate_step(verl_metrics: dict[str, float]) -> dict[str, float]:
    """One step's verl metrics -> the workbench keys that step has (empty if none)."""
    out: dict[str, float] = {}
    for key, ours in PLAIN.items():
        if key in verl_metrics:
            out.update({k: float(verl_metrics[key]) for k in ours})
    sums = {k[len(METRIC_PREFIX):]: v for k, v in verl_metrics.items() if k.startswith(METRIC_PREFIX)}
    if sums:
        out.update(metrics_from_sums(sums))
    for key, value in verl_metrics.items():
        m = _EVAL.match(key)
        if m:
            bench = _metric_name(m["bench"])
            out[eval_key(bench, "accuracy" if m["k"] else pass_at(int(m["kb"])))] = float(value)
    return out


def translate_history(histories: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """Per-key (step, value) series of verl keys -> per-key series of workbench keys."""
    by_step: dict[int, dict[str, float]] = {}
    for key, series in histories.items():
        for step, value in series:
            by_step.setdefault(int(step), {})[key] = value
    out: dict[str, list[tuple[int, float]]] = {}
    for step in sorted(by_step):
        for key, value in translate_step(by_step[step]).items():
            out.setdefault(key, []).append((step, value))
    return out


def _metric_name(data_source: str) -> str:
    """A verl data_source as a workbench key part (`^[a-z0-9_/.]+$`)."""
    return re.sub(r"[^a-z0-9_.]", "_", data_source.lower())
