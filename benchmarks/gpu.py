"""Device check: a few RL steps of a ~100M-parameter Qwen2 on CUDA, with each rollout backend.

Run (repo root, on a GPU machine): .venv/bin/python -m benchmarks.gpu [--steps 4] [--json]
Self-contained, no network: the model is built from a config with the workbench's
character tokenizer and saved to a temporary directory, then `workbench.train.trainer.train`
runs it on the built-in chain-sum task, once with `rollout.backend: hf` and, where vLLM
imports, once with `vllm`; where verl imports, the engine check runs wb_dispo inside verl on the
same model (benchmarks/gpu_verl.py). Each backend runs in its own process, so peak memory and vLLM's
process-wide state belong to one run. Prints per backend: seconds per step (first step,
which holds warm-up, and the mean of the rest; "run s" adds start-up, engine build and the
two evaluations), rollout tokens/s, peak GPU memory
(torch.cuda.max_memory_allocated / _reserved), and the mismatch between the engine's
sampling log-probs and the trainer's own old_logp (`rollout/logp_mismatch_mean|max`, vLLM
only: the hf backend samples with the trainer's own module). Metrics are read back from a
temporary SQLite MLflow store. Sized to finish in under 5 minutes on one H100. Without
CUDA it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# hidden 768, 14 layers, MLP 2048: 14 * (4 * 768^2 + 3 * 768 * 2048) ~ 99M parameters.
MODEL = dict(hidden_size=768, num_hidden_layers=14, intermediate_size=2048, num_attention_heads=12,
             num_key_value_heads=12, max_position_embeddings=1024)
METRICS = ("perf/step_s", "perf/rollout_tokens_per_s", "rollout/logp_mismatch_mean", "rollout/logp_mismatch_max")


def build_model(out_dir: Path) -> int:
    """Save a seeded ~100M Qwen2 and the char tokenizer to `out_dir`; returns the parameter count."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from workbench.models.policy import build_char_tokenizer

    tok = build_char_tokenizer()
    config = Qwen2Config(vocab_size=len(tok), tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **MODEL)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())


def run_config(backend: str, model_dir: str, steps: int):
    from workbench.config import build_run_config

    return build_run_config({
        "experiment": "gpu-check", "run_name": f"gpu-check-{backend}", "seed": 0, "steps": steps, "lr": 1e-5,
        "updates_per_rollout": 4, "rollout_lag": 2, "reward_workers": 2, "sample_every": 1000, "checkpoint_every": 1000,
        "model": {"name": model_dir, "device": "cuda", "dtype": "bfloat16"},
        # A random model never emits EOS: every response runs to max_new_tokens, 256 x 256 tokens a step.
        "rollout": {"backend": backend, "prompts_per_step": 32, "group_size": 8, "max_new_tokens": 256,
                    "gpu_memory_utilization": 0.3, "enable_sleep_mode": True},
        "eval": {"benchmarks": ["micro"], "every": 1000, "k": 2, "limit": 16},
    })


def run_one(backend: str, model_dir: str, steps: int, work: Path) -> dict:
    """Train in this process and return the figures (called in a child process per backend)."""
    from workbench.train.trainer import train

    uri = f"sqlite:///{work / 'mlflow.db'}"
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    result = train(run_config(backend, model_dir, steps), tracking_uri=uri, progress=False,
                   checkpoint_root=str(work / "checkpoints"))
    wall = time.time() - t0
    series = read_metrics(result.run_id, uri)
    step_s = series.get("perf/step_s", [])
    return {
        "backend": backend, "status": result.status, "steps": result.steps_done, "wall_s": wall,
        "step_s_first": step_s[0] if step_s else None,
        "step_s_rest": statistics.fmean(step_s[1:]) if len(step_s) > 1 else None,
        "rollout_tokens_per_s": statistics.fmean(series["perf/rollout_tokens_per_s"][1:] or series["perf/rollout_tokens_per_s"])
        if series.get("perf/rollout_tokens_per_s") else None,
        "logp_mismatch_mean": statistics.fmean(series["rollout/logp_mismatch_mean"]) if series.get("rollout/logp_mismatch_mean") else None,
        "logp_mismatch_max": max(series["rollout/logp_mismatch_max"]) if series.get("rollout/logp_mismatch_max") else None,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
    }


def read_metrics(run_id: str, uri: str) -> dict[str, list[float]]:
    """Per-step values of METRICS, in step order (read back as the tests do)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return {k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)] for k in METRICS}


def child(backend: str, model_dir: str, steps: int, work: Path, timeout_s: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.gpu", "--child", backend, "--model-dir", model_dir,
           "--steps", str(steps), "--work", str(work)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        return {"backend": backend, "status": f"timed out after {timeout_s:.0f}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines() or ["(no output)"]
        return {"backend": backend, "status": f"failed (exit {proc.returncode}): {tail[-1]}", "log_tail": tail[-15:]}
    return json.loads(lines[-1])


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="RL steps per backend (the first holds warm-up)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per backend")
    parser.add_argument("--budget", type=float, default=285.0, help="seconds for the whole check (hf gets at most 110)")
    parser.add_argument("--child", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here; nothing measured.")
        return
    if args.child:
        print(json.dumps(run_one(args.child, args.model_dir, args.steps, Path(args.work))))
        return

    has_vllm = importlib.util.find_spec("vllm") is not None
    vllm_version = _version("vllm") if has_vllm else "not installed"
    with tempfile.TemporaryDirectory(prefix="dispo-gpu-check-") as tmp:
        root = Path(tmp)
        t0 = time.time()
        n_params = build_model(root / "model")
        print(f"device {torch.cuda.get_device_name()} | torch {torch.__version__} | transformers {_version('transformers')} "
              f"| vllm {vllm_version}")
        print(f"model: Qwen2 {n_params / 1e6:.0f}M params, bf16, char tokenizer; chain-sum task; "
              f"{args.steps} steps x 32 prompts x 8 samples x 256 new tokens")
        rows = []
        for backend in ["hf", "vllm"] if has_vllm else ["hf"]:
            work = root / backend
            work.mkdir()
            left = args.budget - (time.time() - t0)
            rows.append(child(backend, str(root / "model"), args.steps, work, min(110.0, left) if backend == "hf" else left))
        if not has_vllm:
            rows.append({"backend": "vllm", "status": "skipped: vllm is not installed"})
        rows.append(_engine_verl(root, args.steps))
    print(f"{'backend':<8}{'status':<10}{'run s':>7}{'s/step 1st':>11}{'s/step rest':>12}{'rollout tok/s':>14}"
          f"{'peak alloc GiB':>15}{'peak resv GiB':>14}{'logp mismatch mean/max':>24}")
    for r in rows:
        if "peak_allocated_gib" not in r:
            print(f"{r['backend']:<8}{r['status']}")
            continue
        mismatch = ("-" if r["logp_mismatch_mean"] is None
                    else f"{r['logp_mismatch_mean']:.4f}/{r['logp_mismatch_max']:.3f}")
        print(f"{r['backend']:<8}{r['status']:<10}{r['wall_s']:>7.0f}{fmt(r['step_s_first'], '.2f'):>11}{fmt(r['step_s_rest'], '.2f'):>12}"
              f"{fmt(r['rollout_tokens_per_s'], ',.0f'):>14}{r['peak_allocated_gib']:>15.2f}{r['peak_reserved_gib']:>14.2f}"
              f"{mismatch:>24}")
    for r in rows:
        if r.get("log_tail"):
            print(f"--- {r['backend']}: last lines of its stderr ---", *r["log_tail"], sep="\n")
    print(f"total {time.time() - t0:.0f}s")
    if args.json:
        for r in rows:
            print(json.dumps(r))


def _engine_verl(root: Path, steps: int) -> dict:
    """Engine check: wb_dispo inside verl on the same model (benchmarks/gpu_verl.py), where verl imports."""
    if importlib.util.find_spec("verl") is None:
        return {"backend": "verl", "status": "skipped: verl is not installed (make install-verl)"}
    from benchmarks.gpu_verl import verl_check

    work = root / "verl"
    work.mkdir()
    try:
        r = verl_check(str(root / "model"), steps, work)
    except Exception as e:  # one row per failure; the other backends' figures still print
        return {"backend": "verl", "status": f"failed: {type(e).__name__}: {e}"}
    regimes = " ".join(f"{k.removeprefix('regime/')}={v:.3f}" for k, v in r["regime_last"].items())
    return {"backend": "verl", "status": f"{r['status']}: {r['steps']} steps, {r['wall_s']:.0f}s, s/step first "
            f"{fmt(r['step_s_first'], '.2f')} rest {fmt(r['step_s_rest'], '.2f')}; last step {regimes}"}


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    main()
