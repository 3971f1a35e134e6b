"""Engine check for benchmarks/gpu.py: a few TRL steps of dispo on the locally built model, one GPU.

Runs `dispo-wb train --engine trl`'s own launcher (`workbench.engines.trl.launch`: torchrun,
one process, `WorkbenchGRPOTrainer`) against a temporary SQLite MLflow store, then reads back
seconds per step, the repetition rate and the regime metrics the run logged under our keys.
`python -m benchmarks.gpu_trl --model-dir D --steps N --work W` prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from workbench.names import REGIMES, REPETITION_RATE, STEP_S, regime_key

REGIME_KEYS = tuple(regime_key(r, "clip_frac") for r in REGIMES)


def trl_check(model_dir: str, steps: int, work: Path) -> dict:
    from workbench import tracking
    from workbench.config import build_run_config
    from workbench.engines.trl import launch

    cfg = build_run_config({
        "engine": "trl", "experiment": "gpu-check", "run_name": "gpu-check-trl", "seed": 0, "steps": steps,
        "lr": 1e-5, "updates_per_rollout": 4, "rollout_lag": 0, "checkpoint_every": 1000,
        "model": {"name": model_dir, "device": "cuda", "dtype": "bfloat16"},
        "objective": {"name": "dispo", "params": {"eps_neg_up": 0.05, "eps_pos_up": 0.1}},
        "rollout": {"prompts_per_step": 32, "group_size": 8, "max_new_tokens": 256},
        "eval": {"benchmarks": ["micro"], "every": 1000, "k": 2, "limit": 16},
    })
    uri = f"sqlite:///{work / 'mlflow.db'}"
    t0 = time.time()
    rc = launch(cfg, tracking_uri=uri, nproc_per_node=1, output_root=str(work / "out"))
    wall = time.time() - t0
    run_id = _only_run(uri)
    series = tracking.metric_histories(run_id, [STEP_S, REPETITION_RATE, *REGIME_KEYS], uri) if run_id else {}
    step_s = [v for _, v in series.get(STEP_S, [])]
    return {"backend": "trl", "exit_code": rc, "wall_s": wall, "steps": len(step_s),
            "step_s_first": step_s[0] if step_s else None,
            "step_s_rest": statistics.fmean(step_s[1:]) if len(step_s) > 1 else None,
            "repetition_last": series[REPETITION_RATE][-1][1] if series.get(REPETITION_RATE) else math.nan,
            "regime_last": {k: (series[k][-1][1] if series.get(k) else math.nan) for k in REGIME_KEYS}}


def _only_run(uri: str) -> str | None:
    from workbench.tracking.store import open_client

    client = open_client(uri)
    exps = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in exps]) if exps else []
    return runs[0].info.run_id if runs else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--work", required=True)
    a = parser.parse_args()
    print(json.dumps(trl_check(a.model_dir, a.steps, Path(a.work)), default=str))


if __name__ == "__main__":
    main()
