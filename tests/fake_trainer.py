"""A stand-in for `workbench.train.trainer.train` in sweep tests and the kill benchmark.

Fast and deterministic: accuracy is a smooth function of the four bounds and the seed, and it
rises over the steps. Tracked like the real trainer: one MLflow run through
`tracking.RunTracker`, nested under `parent_run_id`, with `extra_tags`. Failure modes:
- `eps_neg_up < 0.05` flags a repetition collapse at step 2 (docs/design.md#regimes-and-bounds: too tight -> collapse);
- `eps_pos_down == 0.66` makes the process exit with code 3 (a crash the sweep must contain);
- `run_name: "fake:sleep=0.5,crash_once=PATH"`: sleep seconds per step (kill tests, timings);
  the first run to find PATH missing creates it and exits 3; `hold=NAME`: before ending its run,
  wait (up to 10 minutes) until a file NAME exists in the working folder (a host's own folder in
  the services tests), so a test decides when a host's trial ends. Knobs ride in the config, not in
  the environment, because training processes fork from a server started before a test runs.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from workbench import tracking
from workbench.config import RunConfig, flatten
from workbench.train.results import RunResult

CRASH_EPS_POS_DOWN = 0.66


# The fake returns the real trainer's result type, so the sweep reads it exactly as in production.
FakeResult = RunResult


def final_accuracy(bounds: dict[str, float], seed: int) -> float:
    """Best at 0.2 in every regime; each factor of e away costs accuracy."""
    miss = sum(math.log(min(bounds.get(k, 0.2), 10.0) / 0.2) ** 2 for k in
               ("eps_pos_up", "eps_pos_down", "eps_neg_up", "eps_neg_down"))
    return round(0.6 * math.exp(-miss / 8) + 0.01 * seed, 6)


def train(config: RunConfig, *, tracking_uri: str | None = None, parent_run_id: str | None = None,
          extra_tags: dict[str, str] | None = None, on_eval=None, resume_run_id: str | None = None,
          progress: bool = True) -> FakeResult:
    t0 = time.perf_counter()
    bounds = {k: float(v) for k, v in config.objective.params.items() if isinstance(v, (int, float))}
    knobs = _knobs(config.run_name)
    crash_once = knobs.get("crash_once")
    if bounds.get("eps_pos_down") == CRASH_EPS_POS_DOWN or (crash_once and _first_to_create(Path(crash_once))):
        os._exit(3)
    tracker = tracking.RunTracker(experiment=config.experiment, run_name=config.resolved_run_name(),
                                  tracking_uri=tracking_uri, params=flatten(config.model_dump(mode="python")),
                                  tags={"dispo.kind": "train", "objective": config.objective.name,
                                        **(extra_tags or {})},
                                  parent_run_id=parent_run_id)
    sleep_s = float(knobs.get("sleep", 0))
    target = final_accuracy(bounds, config.seed)
    collapse_step = 2 if bounds.get("eps_neg_up", 0.2) < 0.05 else None
    best: dict[str, float] = {}
    last: dict[str, float] = {}
    status = "FINISHED"
    step = 0
    for step in range(config.steps + 1):
        time.sleep(sleep_s)
        if step % config.eval.every == 0 or step == config.steps:
            last = {"eval/micro/accuracy": round(target * (step + 1) / (config.steps + 1), 6)}
            best = {k: max(v, best.get(k, -math.inf)) for k, v in last.items()}
            tracker.log_metrics(last, step)
            if on_eval is not None and on_eval(step, last):
                status = "STOPPED"
                tracker.set_tags({"stopped_early": "true"})
                break
        if collapse_step is not None and step == collapse_step:
            tracker.set_tags({"collapse": "repetition", "collapse_step": str(step)})
    if knobs.get("hold"):
        deadline = time.monotonic() + 600
        while not Path(knobs["hold"]).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    tracker.finish("FINISHED")
    return FakeResult(run_id=tracker.run_id, status=status, steps_done=step, wall_s=time.perf_counter() - t0,
                      final_eval=last, best_eval=best, collapse="repetition" if collapse_step is not None else None,
                      collapse_step=collapse_step, entropy_first=1.0, entropy_last=0.5 + target)


def _knobs(run_name: str | None) -> dict[str, str]:
    if not run_name or not run_name.startswith("fake:"):
        return {}
    return dict(kv.split("=", 1) for kv in run_name.removeprefix("fake:").split(",") if "=" in kv)


def _first_to_create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True
