"""Engine check for benchmarks/gpu.py: a few verl steps of wb_dispo on the locally built model.

Called by `python -m benchmarks.gpu` as a child process in verl's environment (this interpreter
when it imports verl, else `DISPO_VERL_PYTHON`, else `.venv-verl/bin/python`; verl samples
with vLLM, which that environment needs). Runs `dispo-wb train --engine verl`'s
own code path (`workbench.engines.verl.launch.train`) on one GPU against a temporary SQLite
MLflow store, then reads back seconds per step and the regime metrics the wb_dispo loss logged
(through the key mapping). Returns one dict, printed by gpu.py as a row.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

REGIME_KEYS = tuple(f"regime/{r}/{s}" for r in ("pos_up", "pos_down", "neg_up", "neg_down")
                    for s in ("token_frac", "clip_frac"))


def verl_check(model_dir: str, steps: int, work: Path) -> dict:
    from transformers import AutoTokenizer

    from workbench import tracking
    from workbench.config import build_run_config
    from workbench.engines.verl.data import PLAIN_TEMPLATE
    from workbench.engines.verl.launch import train

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.chat_template = PLAIN_TEMPLATE  # verl always applies a chat template; the char model reads raw prompts
    tok.save_pretrained(model_dir)
    cfg = build_run_config({
        "engine": "verl", "experiment": "gpu-check", "run_name": "gpu-check-verl", "seed": 0, "steps": steps,
        "lr": 1e-5, "updates_per_rollout": 4, "rollout_lag": 0, "model": {"name": model_dir},
        "objective": {"name": "dispo", "params": {"eps_neg_up": 0.05, "eps_pos_up": 0.1}},
        "rollout": {"prompts_per_step": 32, "group_size": 8, "max_new_tokens": 256, "gpu_memory_utilization": 0.3},
        "eval": {"benchmarks": ["micro"], "every": 1000, "k": 2, "limit": 16},
    })
    uri = f"sqlite:///{work / 'mlflow.db'}"
    engine_args = ["trainer.n_gpus_per_node=1", "trainer.nnodes=1", "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
                   "data.max_prompt_length=32", f"trainer.default_local_dir={work / 'ckpt'}"]
    t0 = time.time()
    result = train(cfg, tracking_uri=uri, engine_args=engine_args, echo=lambda line: None)
    wall = time.time() - t0
    series = tracking.metric_histories(result.run_id, ["perf/step_s", "response/repetition_rate", *REGIME_KEYS], uri)
    step_s = [v for _, v in series["perf/step_s"]]
    last = {k: (series[k][-1][1] if series[k] else math.nan) for k in REGIME_KEYS}
    return {"backend": "verl", "status": result.status, "steps": result.steps_done, "wall_s": wall,
            "step_s_first": step_s[0] if step_s else None,
            "step_s_rest": statistics.fmean(step_s[1:]) if len(step_s) > 1 else None,
            "regime_last": last, "repetition_steps": len(series["response/repetition_rate"]), "reason": result.reason}


def main() -> None:
    """`python -m benchmarks.gpu_verl --model-dir D --steps N --work W`: one JSON line (gpu.py runs this in verl's env)."""
    import argparse
    import json

    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--work", required=True)
    a = parser.parse_args()
    print(json.dumps(verl_check(a.model_dir, a.steps, Path(a.work)), default=str))


if __name__ == "__main__":
    main()
