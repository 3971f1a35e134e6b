"""Device check: a few RL steps of a ~100M-parameter Qwen2 on CUDA, with each rollout backend.

Run (repo root, on a GPU machine): .venv/bin/python -m benchmarks.gpu [--steps 3] [--only trl] [--json]
Self-contained, no network: the model is built from a config with the workbench's
character tokenizer and saved to a temporary directory, then `workbench.train.trainer.train`
runs it on the built-in chain-sum task, once with `rollout.backend: hf` and once with `vllm`;
then a TRL run (`dispo-wb train --engine trl`'s launcher, benchmarks/gpu_trl.py) and a verl run
with our plugin (wb_dispo through `dispo-wb train --engine verl`'s launcher, in verl's
environment, benchmarks/gpu_verl.py) on the same model. One line per check as it finishes; a
check that cannot run here (no CUDA, vLLM, TRL or verl) prints one line saying why. Each backend runs in its own process, so peak memory and vLLM's
process-wide state belong to one run. Prints per backend: seconds per step (first step,
which holds warm-up, and the mean of the rest; "run s" adds start-up, engine build and the
two evaluations), rollout tokens/s, peak GPU memory
(torch.cuda.max_memory_allocated / _reserved), and the mismatch between the engine's
sampling log-probs and the trainer's own old_logp (`rollout/logp_mismatch_mean|max`, vLLM
only: the hf backend samples with the trainer's own module). Metrics are read back from a
temporary SQLite MLflow store. Sized to finish in under 10 minutes on one H100-class GPU
(per-check limits in LIMIT_S); `--only trl` etc. runs a subset.
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


CHECKS = ("hf", "vllm", "trl", "verl")
LIMIT_S = {"hf": 100.0, "vllm": 150.0, "trl": 120.0, "verl": 170.0}  # each check's share of the 10-minute budget


def verl_python() -> str | None:
    """An interpreter that imports verl: this one, DISPO_VERL_PYTHON, or .venv-verl/bin/python; None if none."""
    import os

    if importlib.util.find_spec("verl") is not None:
        return sys.executable
    for candidate in (os.environ.get("DISPO_VERL_PYTHON"), str(Path(__file__).resolve().parents[1] / ".venv-verl/bin/python")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def skip_reasons() -> dict[str, str]:
    """Why each check cannot run here (empty: all can)."""
    if not torch.cuda.is_available():
        return {c: "no CUDA device here" for c in CHECKS}
    out = {}
    if importlib.util.find_spec("vllm") is None:
        out["vllm"] = "vllm is not installed in this environment (pip install '.[gpu]')"
    if importlib.util.find_spec("trl") is None:
        out["trl"] = "TRL is not installed in this environment (pip install '.[trl]')"
    if verl_python() is None:
        out["verl"] = "no interpreter with verl (make install-verl, or DISPO_VERL_PYTHON=.../python)"
    return out


def engine_child(name: str, python: str, model_dir: str, steps: int, work: Path, timeout_s: float) -> dict:
    """benchmarks/gpu_<name>.py in its own process: its one JSON line, or why there is none."""
    cmd = [python, "-m", f"benchmarks.gpu_{name}", "--model-dir", model_dir, "--steps", str(steps), "--work", str(work)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        return {"backend": name, "status": f"timed out after {timeout_s:.0f}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines() or ["(no output)"]
        return {"backend": name, "status": f"failed (exit {proc.returncode}): {tail[-1]}", "log_tail": tail[-15:]}
    return json.loads(lines[-1])


def line(r: dict) -> str:
    """The one line a check prints."""
    name = r["backend"]
    if "peak_allocated_gib" in r:
        mismatch = ("-" if r.get("logp_mismatch_mean") is None
                    else f"{r['logp_mismatch_mean']:.4f}/{r['logp_mismatch_max']:.3f}")
        return (f"{name:<5} {r['status']}: run {r['wall_s']:.0f}s, s/step first {fmt(r['step_s_first'], '.2f')} "
                f"rest {fmt(r['step_s_rest'], '.2f')}, rollout {fmt(r['rollout_tokens_per_s'], ',.0f')} tok/s, peak "
                f"{r['peak_allocated_gib']:.2f}/{r['peak_reserved_gib']:.2f} GiB alloc/resv, logp mismatch {mismatch}")
    if "regime_last" in r:
        regimes = " ".join(f"{k.removeprefix('regime/')}={v:.3f}" for k, v in r["regime_last"].items())
        status = r.get("status") or ("FINISHED" if r.get("exit_code") == 0 else f"exit {r.get('exit_code')}")
        extra = (f", repetition logged at {r['repetition_steps']} steps" if "repetition_steps" in r
                 else f", repetition {fmt(r.get('repetition_last'), '.3f')}")
        return (f"{name:<5} {status}: {r['steps']} steps in {r['wall_s']:.0f}s, s/step first "
                f"{fmt(r['step_s_first'], '.2f')} rest {fmt(r['step_s_rest'], '.2f')}{extra}; last step {regimes}")
    return f"{name:<5} {r['status']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="RL steps per check (the first holds warm-up)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per check")
    parser.add_argument("--only", choices=CHECKS, action="append", help="run only these checks (repeatable)")
    parser.add_argument("--child", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_one(args.child, args.model_dir, args.steps, Path(args.work))))
        return
    wanted = args.only or list(CHECKS)
    skips = skip_reasons()
    t0 = time.time()
    rows = []
    if all(c in skips for c in wanted):
        rows = [{"backend": c, "status": f"skipped: {skips[c]}"} for c in wanted]
        for r in rows:
            print(line(r))
    else:
        with tempfile.TemporaryDirectory(prefix="dispo-gpu-check-") as tmp:
            root = Path(tmp)
            n_params = build_model(root / "model")
            print(f"device {torch.cuda.get_device_name()} | torch {torch.__version__} | transformers "
                  f"{_version('transformers')} | vllm {_version('vllm')} | trl {_version('trl')}")
            print(f"model: Qwen2 {n_params / 1e6:.0f}M params, bf16, char tokenizer; chain-sum task; "
                  f"{args.steps} steps x 32 prompts x 8 samples x 256 new tokens")
            for name in wanted:
                if name in skips:
                    rows.append({"backend": name, "status": f"skipped: {skips[name]}"})
                else:
                    work = root / name
                    work.mkdir()
                    if name in ("hf", "vllm"):
                        rows.append(child(name, str(root / "model"), args.steps, work, LIMIT_S[name]))
                    else:
                        python = sys.executable if name == "trl" else verl_python()
                        rows.append(engine_child(name, python, str(root / "model"), args.steps, work, LIMIT_S[name]))
                print(line(rows[-1]), flush=True)
        for r in rows:
            if r.get("log_tail"):
                print(f"--- {r['backend']}: last lines of its stderr ---", *r["log_tail"], sep="\n")
    print(f"total {time.time() - t0:.0f}s")
    if args.json:
        for r in rows:
            print(json.dumps(r, default=str))


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    main()
