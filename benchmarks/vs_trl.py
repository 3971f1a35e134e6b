"""dispo-wb against TRL's GRPOTrainer on the same micro config, side by side.

    pip install -e '.[scale]'                  # TRL and accelerate
    python benchmarks/vs_trl.py                # micro-3m, 16 prompts x 8 samples, 32 new tokens, 3 pairs
    python benchmarks/vs_trl.py --pairs 5 --rollouts 3 --lag 64 --model micro-3m --new-tokens 32
    python benchmarks/vs_trl.py --arms ours,ours-inline,trl   # and dispo-wb writing its run in process

Both arms start from the same weights (the cached SFT warm start of the seed, built first if
missing, not timed), the same character tokenizer, the same prompts generator and the same
sampling (temperature 1, full distribution). TRL is matched to dispo-wb's step: one rollout
batch of 16 prompts x 8 samples (`steps_per_generation=16`, `per_device_train_batch_size=8`,
`gradient_accumulation_steps=1`, so TRL recomputes old log-probs after generation; dispo-wb takes
them from its decode loop, `rollout.old_logp: auto`) followed by 16 AdamW steps; no KL term. A
"step" below is that whole cycle.

Each arm runs in its own process (peak RSS is that process's own high-water mark, VmHWM in
/proc/self/status: `ru_maxrss` would carry the parent's peak through fork and exec; dispo-wb's
reward worker processes are not in it, TRL scores in-process). Peak RSS is also printed per
phase (VmHWM read at the end of each phase, then reset through /proc/self/clear_refs, so each
figure is that phase's own peak; a step's phases keep their largest over the steps). dispo-wb's
run is written by a child process that alone imports MLflow (`tracking.ChildTracker`); its own
peak is printed beside the training process's, and the ratio to TRL is given with and without it
(the arm `trl` logs nowhere; `trl-mlflow` is TRL with `report_to="mlflow"` writing to a SQLite store, as
dispo-wb does, MLflow in its training process). The arm `ours-inline` imports MLflow first, so its run is written in the
training process, as before issue 22. Arms rotate their order each round, the load average is
printed with each round, and ratios are taken from the medians of this one invocation: on a
shared machine only figures from the same run compare.

Each arm also measures the matmul bound of decoding in its own process after its run: one
no-gradient forward over all 128 x `--new-tokens` positions at once of the same model shape
(positions per second), and prints its generation's real tokens/s as a share of it.
`benchmarks/decode.py` times the decode loop alone against the same bound, before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("generate", "reward", "old_logp", "update", "tracking")


def _peak_rss_mb() -> float:
    """This process's own peak RSS; ru_maxrss is inherited through fork and exec, so an arm would report its parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _bound_tok_s(args) -> float:
    """The matmul bound of decoding, in this process: positions per second of one no-gradient forward over
    all 128 x `--new-tokens` positions at once (the model's shape; its weights do not change the time),
    the median of 3 after one warm-up, at the arm's thread count. `benchmarks/decode.py` measures the same."""
    import torch

    from workbench.models.policy import build_char_tokenizer, build_micro_model

    tok = build_char_tokenizer()
    model = build_micro_model(args.model, tok, seed=args.seed).eval()
    ids = torch.randint(5, len(tok), (128, args.new_tokens), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        for _ in range(4):
            t = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            times.append(time.perf_counter() - t)
    return ids.numel() / statistics.median(times[1:])


class _PhasePeaks:
    """This process's peak RSS per phase: VmHWM read when a phase ends, then reset to the current RSS (5
    written to /proc/self/clear_refs), so that each phase's figure is its own high-water mark; `overall`
    is the largest, the process's peak. Phases that recur (a step's) keep their largest."""

    def __init__(self):
        self.peaks: dict[str, float] = {}
        self.overall = 0.0

    def end(self, phase: str) -> None:
        hwm = _peak_rss_mb()
        self.peaks[phase] = max(self.peaks.get(phase, 0.0), hwm)
        self.overall = max(self.overall, hwm)
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:  # not Linux, or not allowed: the figures become cumulative
            pass


def _config(args, steps: int):
    from workbench.config import build_run_config

    return build_run_config({
        "model": {"name": args.model}, "seed": args.seed, "threads": args.threads, "steps": steps,
        "rollout_lag": args.lag, "updates_per_rollout": 16, "lr": 5e-6,
        "rollout": {"prompts_per_step": 16, "group_size": args.group_size, "max_new_tokens": args.new_tokens},
        "eval": {"benchmarks": [], "every": 10 ** 6}, "sft": {"enabled": not args.no_sft},
        "checkpoint_every": 10 ** 6, "sample_every": 10 ** 6})


def arm_ours(args, writer: str = "child") -> dict:
    """One dispo-wb run; `writer` "inline" imports MLflow first, so the run is written in this process (the
    trainer's choice where MLflow is already loaded), "child" leaves it to the trainer (a child process)."""
    peaks = _PhasePeaks()
    if writer == "inline":
        import mlflow  # noqa: F401
    from workbench import tracking
    from workbench.names import (LENGTH_MEAN, ROLLOUT_POSITIONS_PER_S, ROLLOUT_TOKENS_PER_S, STEP_S, TRACKING_S,
                                 phase_key)
    from workbench.train import trainer

    peaks.end("imports")
    writer_mb: list[float] = []
    load_model, setup, lap, close = (trainer._load_model, trainer.setup, trainer._PhaseClock.lap,
                                     tracking.ChildTracker.close)
    train_step = trainer.train_step
    step_cpu: list[float] = []  # CPU seconds of this process per train_step: less moved by other jobs than wall

    def timed_step(*a, **k):
        c = time.process_time()
        out = train_step(*a, **k)
        step_cpu.append(time.process_time() - c)
        return out

    def timed_load(*a, **k):
        out = load_model(*a, **k)
        peaks.end("model")  # the policy (and its cached SFT warm start)
        return out

    def timed_setup(*a, **k):
        peaks.end("open run")  # the run's params and tags, and whatever its writer imports
        out = setup(*a, **k)
        peaks.end("setup")  # optimizer, snapshot, rollout backend, reward workers
        return out

    def timed_lap(self, name=None):
        out = lap(self, name)
        peaks.end(name or "step, other")
        return out

    def closing(self):
        close(self)
        if self.child_peak_rss_mb is not None:
            writer_mb.append(self.child_peak_rss_mb)

    trainer._load_model, trainer.setup, trainer._PhaseClock.lap = timed_load, timed_setup, timed_lap
    trainer.train_step = timed_step
    tracking.ChildTracker.close = closing
    steps = args.rollouts + 1  # the first step warms caches and allocators and is not counted
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        res = trainer.train(_config(args, steps), tracking_uri=uri, progress=False, checkpoint_root=f"{tmp}/ck")
        peaks.end("end of run")
        keys = [STEP_S, ROLLOUT_TOKENS_PER_S, ROLLOUT_POSITIONS_PER_S, LENGTH_MEAN] + [phase_key(p) for p in PHASES]
        h = tracking.metric_histories(res.run_id, keys, uri)
        ckpt = sum(f.stat().st_size for f in Path(f"{tmp}/ck").rglob("state.pt"))
    per = {k: [v for s, v in h[k] if s > 1] for k in keys}
    step_s = [a + b for a, b in zip(per[STEP_S], per[TRACKING_S])]
    return {"s_per_step": statistics.median(step_s), "cpu_s_per_step": statistics.median(step_cpu[1:]),
            **{p: statistics.median(per[phase_key(p)]) for p in PHASES},
            "real_tok_s": statistics.median(per[ROLLOUT_TOKENS_PER_S]),
            "positions_s": statistics.median(per[ROLLOUT_POSITIONS_PER_S]),
            "length_mean": statistics.median(per[LENGTH_MEAN]),
            "peak_rss_mb": peaks.overall, "writer_rss_mb": writer_mb[0] if writer_mb else 0.0,
            "phase_rss_mb": peaks.peaks, "checkpoint_mb": ckpt / 2 ** 20, "bound_tok_s": _bound_tok_s(args)}


def arm_trl(args, mlflow: bool = False) -> dict:
    """TRL's GRPOTrainer; with `mlflow`, logging to a SQLite MLflow store as dispo-wb does (`report_to="mlflow"`,
    MLflow imported in the training process, as TRL does it)."""
    peaks = _PhasePeaks()
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from workbench.tasks.rewards import score_answer
    from workbench.train.sft import warm_start
    from workbench.tasks.micro import build_task

    cfg = _config(args, args.rollouts + 1)
    peaks.end("imports")
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    model, tok, _ = warm_start(cfg, log=lambda *_: None)
    peaks.end("model")
    task, rng = build_task(cfg.task), random.Random(args.seed)
    steps = (args.rollouts + 1) * 16
    # Plain-text prompts: TRL encodes them with the tokenizer's special tokens (<bos>), as dispo-wb does.
    problems = task.train_batch(rng, 16 * (args.rollouts + 1))
    data = Dataset.from_list([{"prompt": p.prompt, "answer": p.answer} for p in problems])

    def reward(completions, answer, **_):
        return [score_answer(c, a, require_boxed=True) for c, a in zip(completions, answer)]

    marks: list[float] = []
    gen_s: list[float] = []
    real_tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            marks.append(time.perf_counter())

    generate = model.generate

    def timed_generate(*a, **k):
        t = time.perf_counter()
        out = generate(*a, **k)
        gen_s.append(time.perf_counter() - t)
        width = k["input_ids"].shape[1] if "input_ids" in k else a[0].shape[1]
        resp = out[:, width:]
        ended = (resp == tok.eos_token_id).int()
        lengths = torch.where(ended.any(1), ended.argmax(1) + 1, torch.full_like(ended[:, 0], resp.shape[1]))
        real_tokens.append(int(lengths.sum()))
        return out

    model.generate = timed_generate
    with tempfile.TemporaryDirectory() as tmp:
        if mlflow:
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
            os.environ["MLFLOW_EXPERIMENT_NAME"] = "vs_trl"
        targs = GRPOConfig(
            output_dir=tmp, max_steps=steps, per_device_train_batch_size=8, gradient_accumulation_steps=1,
            steps_per_generation=16, num_generations=8, num_iterations=1, max_completion_length=args.new_tokens,
            temperature=1.0, top_p=1.0, top_k=0, learning_rate=5e-6, weight_decay=0.0, max_grad_norm=1.0,
            lr_scheduler_type="constant", warmup_steps=0, beta=0.0, loss_type="dapo", use_cpu=True, bf16=False,
            report_to="mlflow" if mlflow else "none", save_strategy="no", logging_steps=16, disable_tqdm=True, seed=args.seed,
            shuffle_dataset=False, dataloader_num_workers=0)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=targs, train_dataset=data, processing_class=tok,
                              callbacks=[Clock()])
        logs_to_mlflow = any(type(c).__name__ == "MLflowCallback" for c in trainer.callback_handler.callbacks)
        assert logs_to_mlflow == mlflow, "TRL's MLflow callback is not where the arm says"
        torch.set_num_threads(args.threads)
        peaks.end("set-up")
        t0 = time.perf_counter()
        trainer.train()
        peaks.end("training")
    starts = [t0] + marks
    cycles = [starts[(i + 1) * 16] - starts[i * 16] for i in range(1, args.rollouts + 1)]
    gens = gen_s[1:args.rollouts + 1]
    return {"s_per_step": statistics.median(cycles), "generate": statistics.median(gens),
            "real_tok_s": statistics.median(n / s for n, s in zip(real_tokens[1:], gens)),
            "positions_s": statistics.median(128 * args.new_tokens / s for s in gens),
            "peak_rss_mb": peaks.overall, "phase_rss_mb": peaks.peaks, "bound_tok_s": _bound_tok_s(args)}


def _run_arm(name: str, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--arm", name, *argv]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{name} arm failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


NAMES = {"ours": "dispo-wb", "ours-inline": "inline", "trl": "TRL", "trl-mlflow": "TRL+MLflow"}


def _fmt(r: dict) -> str:
    phases = " ".join(f"{p} {r[p]:.2f}" for p in PHASES if p in r)
    ck = f"  checkpoint {r['checkpoint_mb']:.0f} MB" if "checkpoint_mb" in r else ""
    writer = f" (+ MLflow writer process {r['writer_rss_mb']:.0f} MB)" if r.get("writer_rss_mb") else ""
    return (f"{r['s_per_step']:6.2f} s/step  [{phases}]  gen real {r['real_tok_s']:.0f} tok/s "
            f"({r['real_tok_s'] / r['bound_tok_s']:.0%} of the bound {r['bound_tok_s']:.0f}), "
            f"positions {r['positions_s']:.0f}/s  peak RSS {r['peak_rss_mb']:.0f} MB{writer}{ck}")


def _fmt_phases(peaks: dict[str, float]) -> str:
    return "peak RSS per phase, MB: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--rollouts", type=int, default=3, help="measured rollout batches per arm (one more warms up)")
    ap.add_argument("--model", default="micro-3m")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--lag", type=int, default=64)
    ap.add_argument("--group-size", type=int, default=8, help="samples per prompt (dispo-wb's arm only; TRL's is 8)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-sft", action="store_true", help="start from the freshly initialised model")
    ap.add_argument("--arms", default="ours,trl",
                    help="comma-separated, rotated each round: ours, trl, ours-inline (dispo-wb with its run written "
                         "in the training process, as before issue 22), trl-mlflow (TRL logging to an MLflow store)")
    ap.add_argument("--arm", choices=list(NAMES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.group_size != 8 and (str(args.arm).startswith("trl") or not args.arm and "trl" in args.arms):
        ap.error("--group-size other than 8 is for dispo-wb's arm alone (benchmarks/scaling.py); TRL's arm is matched at 8")
    if args.arm:
        run = {"ours": arm_ours, "ours-inline": lambda a: arm_ours(a, writer="inline"), "trl": arm_trl,
               "trl-mlflow": lambda a: arm_trl(a, mlflow=True)}[args.arm]
        print(json.dumps(run(args)))
        return
    argv = [a for a in sys.argv[1:]]
    if not args.no_sft:  # build the warm start once, outside every timed process
        from workbench.train.sft import warm_start

        warm_start(_config(args, 1), log=lambda *_: None)
    arms = args.arms.split(",")
    print(f"{args.model}, 16 prompts x 8 samples, {args.new_tokens} new tokens, 16 AdamW steps per rollout batch, "
          f"lag {args.lag}, {args.threads} threads; {args.rollouts} measured rollout batches per arm; arms "
          + ", ".join(NAMES[a] for a in arms))
    results: dict[str, list[dict]] = {a: [] for a in arms}
    for i in range(args.pairs):
        order = arms[i % len(arms):] + arms[:i % len(arms)]
        load_before = os.getloadavg()[0]
        for name in order:
            results[name].append(_run_arm(name, argv))
        print(f"round {i + 1} (load avg {load_before:.2f} -> {os.getloadavg()[0]:.2f}, order "
              f"{'/'.join(NAMES[a] for a in order)})")
        for name in arms:
            print(f"  {NAMES[name]:8s} {_fmt(results[name][-1])}")
            print(f"  {'':8s} {_fmt_phases(results[name][-1]['phase_rss_mb'])}")
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "phase_rss_mb"}
           for name, rs in results.items()}
    print("medians")
    for name in arms:
        phases = {k: statistics.median(r["phase_rss_mb"][k] for r in results[name]) for k in results[name][0]["phase_rss_mb"]}
        print(f"  {NAMES[name]:8s} {_fmt(med[name])}")
        print(f"  {'':8s} {_fmt_phases(phases)}")
    if "ours" in med and "trl" in med:
        print(f"ratio dispo-wb / TRL: s/step {med['ours']['s_per_step'] / med['trl']['s_per_step']:.2f}x, "
              f"peak RSS {med['ours']['peak_rss_mb'] / med['trl']['peak_rss_mb']:.2f}x (with the MLflow writer "
              f"process: {(med['ours']['peak_rss_mb'] + med['ours']['writer_rss_mb']) / med['trl']['peak_rss_mb']:.2f}x), "
              f"generation real tokens/s {med['ours']['real_tok_s'] / med['trl']['real_tok_s']:.2f}x")
    if "ours" in med and "trl-mlflow" in med:
        a, b = med["ours"], med["trl-mlflow"]
        print(f"both writing their run to MLflow, dispo-wb / TRL+MLflow: s/step {a['s_per_step'] / b['s_per_step']:.2f}x, "
              f"peak RSS, training process {a['peak_rss_mb'] / b['peak_rss_mb']:.2f}x, training process + MLflow "
              f"writer {(a['peak_rss_mb'] + a['writer_rss_mb']) / b['peak_rss_mb']:.2f}x")
    if "ours" in med and "ours-inline" in med:
        a, b = med["ours"], med["ours-inline"]
        print(f"run written by a child / in process: training process peak RSS {a['peak_rss_mb']:.0f} / "
              f"{b['peak_rss_mb']:.0f} MB ({a['peak_rss_mb'] / b['peak_rss_mb']:.2f}x), the child's own "
              f"{a['writer_rss_mb']:.0f} MB; s/step {a['s_per_step'] / b['s_per_step']:.2f}x")
    bound = statistics.median(r["bound_tok_s"] for rs in results.values() for r in rs)
    print(f"decoding against the matmul bound (one forward over 128 x {args.new_tokens} positions, measured in every "
          f"arm, median {bound:.0f} positions/s): "
          + ", ".join(f"{NAMES[n]} {med[n]['real_tok_s'] / bound:.0%}" for n in arms))

if __name__ == "__main__":
    main()
