"""Seconds per paired seed of the claims study's run config, old_logp recomputed against from the rollout.

    python benchmarks/claims_budget.py                      # studies/claims.yaml's base (30 steps), 2 pairs
    python benchmarks/claims_budget.py --steps 4 --pairs 1  # a quick figure: 4 steps, projected to the base's
    python benchmarks/claims_budget.py --steps 4 --sft-steps 200   # ... from a warm start cut to 200 SFT steps
    python benchmarks/claims_budget.py --before 2d90519            # the study as it was at a commit, and as it is

`--before REF` times the claims study as a researcher pays for it, then and now: one seed run of the
base arm of `studies/claims.yaml` as it stood at the commit REF, run by that commit's code (a git
worktree of it, in a temporary folder), against the same of this tree, through `dispo-wb train
--config` (the study file's `base:` block, seed 0, 1 thread, a SQLite store of its own). The run
configs differ as the study files do (model, steps, prompts, held-out set): that is the point, what
a paired seed of the study costs. Each tree's warm start is built first, untimed; then runs
alternate (before, after, after, before, ...), `--pairs` of them, wall time of the whole command.
`--config before` runs both trees on the study file as it stood at REF (the code's own speed-up,
at the old budget); `--config now` both on this tree's, where the old code accepts it.

Each run is studies/claims.yaml's base arm at seed 0 (its SFT warm start is built first if
missing, not timed), in a process of its own, with `rollout.old_logp` set to `recompute` (before)
or `auto` (after: old log-probs from the decode loop). Runs alternate the order (AB, BA, ...) and
the load average is printed with each. A run is timed whole (the evaluation at step 0 and at the
end included); with `--steps` below the base's, a full run is projected as the measured run's time
outside its steps plus the base's step count times the median step (steps after the first).

`--sft-steps N` replaces the study's warm start (trained until a sampled avg@4 check enters the
band, which takes long on a loaded machine) by N SFT steps and one greedy check: the RL run is
otherwise the study's, but starts from another accuracy, so its response lengths differ somewhat.

A paired seed is every arm trained once at that seed; the arms differ only in clip bounds or the
objective, whose cost is the same, so a paired seed costs arms x one run. The whole study is
seeds x arms runs: at 1 worker one after the other, at 2 workers two at a time, each run with
`cpu_count // workers` torch threads as the sweep gives them (`--threads`; 1 is the 2-worker
setting on 2 cores); the 2-worker figure assumes two free cores, so on a shared machine it is a
lower bound. Only figures from the same invocation compare.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "claims.yaml"
MODES = ("recompute", "auto")


def _vm_hwm_mb() -> float:
    """This process's own peak RSS (ru_maxrss would be inherited through fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _config(mode: str, steps: int | None, threads: int, sft_steps: int | None = None):
    from workbench.sweep.study_file import load_study_file

    study = load_study_file(STUDY)
    over = {"rollout.old_logp": mode, "checkpoint_every": 10 ** 6}
    if steps is not None:
        over["steps"] = steps
    if sft_steps is not None:
        over.update({"sft.max_steps": sft_steps, "sft.eval_every": sft_steps, "sft.check": "greedy",
                     "sft.target_high": 1.0})
    return study, study.run_config(over, study.seeds[0], threads)


def child(mode: str, steps: int | None, threads: int, sft_steps: int | None) -> dict:
    import torch

    from workbench import tracking
    from workbench.names import STEP_S, TRACKING_S, phase_key
    from workbench.train.sft import warm_start
    from workbench.train.trainer import train

    _, cfg = _config(mode, steps, threads, sft_steps)
    torch.set_num_threads(threads)
    warm_start(cfg, log=lambda *_: None)  # built once and cached; not timed
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        t = time.perf_counter()
        res = train(cfg, tracking_uri=uri, progress=False, checkpoint_root=f"{tmp}/ck")
        run_s = time.perf_counter() - t
        keys = [STEP_S, TRACKING_S, phase_key("generate"), phase_key("old_logp"), phase_key("update")]
        h = tracking.metric_histories(res.run_id, keys, uri)
    step = [a + b for (_, a), (_, b) in zip(sorted(h[STEP_S]), sorted(h[TRACKING_S]))]
    return {"mode": mode, "steps": len(step), "run_s": run_s, "outside_steps_s": run_s - sum(step),
            "step_s": statistics.median(step[1:] or step),
            **{p: statistics.median(v for _, v in h[phase_key(p)]) for p in ("generate", "old_logp", "update")},
            "vm_hwm_mb": _vm_hwm_mb()}


def _study_at(tree: Path) -> tuple[dict, int, int]:
    """(the base run config, arms, seeds) of studies/claims.yaml in `tree`, read as plain YAML."""
    import yaml

    doc = yaml.safe_load((tree / "studies" / "claims.yaml").read_text())
    seeds = doc["seeds"]
    n_seeds = (max(seeds["looks"]) if isinstance(seeds, dict) and "looks" in seeds
               else seeds.get("count", 0) if isinstance(seeds, dict) else len(seeds) if isinstance(seeds, list) else seeds)
    return doc["base"], len(doc["space"]["arm"]), n_seeds


def _train_s(tree: Path, config: Path, work: Path, steps: int | None = None) -> float:
    """Wall seconds of `dispo-wb train --config` run by the code in `tree`, in a fresh store under `work`."""
    import shutil

    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    main = ("try:\n from workbench.cli.app import app\nexcept ImportError:\n from workbench.cli import app\napp()")
    cmd = [sys.executable, "-c", main, "train", "--config", str(config),
           "--seed", "0", "--threads", "1", "-q", "--tracking-uri", f"sqlite:///{store}/mlflow.db",
           "--set", f"sft.cache_dir={ROOT / '.cache' / ('sft-' + work.name.split('-')[0])}", "--set", "checkpoint_every=1000000"]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=store, env=env)
    if out.returncode != 0:
        sys.exit(f"train at {tree} failed:\n{out.stderr[-2000:]}")
    return time.perf_counter() - t


def before_after(ref: str, pairs: int, which: str = "own") -> None:
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "tree-before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(old), ref], check=True)
        try:
            trees = {"before": old, "now": ROOT}
            studies, configs = {}, {}
            for name, tree in trees.items():
                base, arms, seeds = _study_at(tree if which == "own" else trees[which])
                studies[name] = (base, arms, seeds)
                configs[name] = Path(tmp) / f"{name}.yaml"
                configs[name].write_text(yaml.safe_dump(base))
                work = Path(tmp) / f"{name}-{which}"
                work.mkdir()
                print(f"{name:>6} ({ref if name == 'before' else 'this tree'}, study file of {which}): {base['model']['name']}, {base['steps']} "
                      f"steps, {arms} arms x {seeds} seeds; warm start: {_train_s(tree, configs[name], work, 1):.0f} s "
                      f"(untimed run of 1 step)", flush=True)
            times: dict[str, list[float]] = {"before": [], "now": []}
            for i in range(pairs):
                for name in (("before", "now") if i % 2 == 0 else ("now", "before")):
                    load = os.getloadavg()[0]
                    times[name].append(_train_s(trees[name], configs[name], Path(tmp) / f"{name}-{which}"))
                    print(f"pair {i + 1} {name:>6}: {times[name][-1]:6.1f} s per seed run; load {load:.2f} -> "
                          f"{os.getloadavg()[0]:.2f}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    med = {}
    for name in ("before", "now"):
        _, arms, seeds = studies[name]
        med[name] = statistics.median(times[name])
        per_seed = arms * med[name]
        print(f"{name:>6}: {med[name]:6.1f} s per run (median of {pairs}), {per_seed / 60:5.1f} min per paired seed "
              f"({arms} arms); {arms * seeds} runs: {arms * seeds * med[name] / 3600:4.2f} h at 1 worker, "
              f">= {arms * seeds * med[name] / 2 / 3600:4.2f} h at 2")
    ratio = (studies["now"][1] * med["now"]) / (studies["before"][1] * med["before"])
    print(f"seconds per paired seed, now / before: {ratio:.3f}x; load now {os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default: the study's); projected to the study's")
    ap.add_argument("--pairs", type=int, default=2, help="alternated pairs of runs (recompute, auto)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--sft-steps", type=int, default=None, help="warm start cut to this many SFT steps (default: the study's)")
    ap.add_argument("--before", metavar="REF", help="time the claims study at commit REF against this tree's")
    ap.add_argument("--config", choices=("own", "before", "now"), default="own",
                    help="with --before: each tree's own study file (default), or both on one of them")
    ap.add_argument("--child", choices=(*MODES, "warm"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.before:
        before_after(args.before, args.pairs, args.config)
        return
    if args.child == "warm":
        import torch

        from workbench.train.sft import warm_start

        torch.set_num_threads(args.threads)
        print("warm start:", warm_start(_config("auto", None, args.threads, args.sft_steps)[1], log=print)[2], flush=True)
        return
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.threads, args.sft_steps)))
        return
    study, cfg = _config("auto", args.steps, args.threads, args.sft_steps)
    if args.sft_steps is not None:  # built once, not timed
        subprocess.run([sys.executable, __file__, "--child", "warm", "--threads", str(args.threads),
                        "--sft-steps", str(args.sft_steps)], check=True, cwd=ROOT)
    arms = len(study.space["arm"].choices)
    base_steps = study.base.steps
    print(f"claims base: {cfg.model.name}, {cfg.rollout.prompts_per_step}x{cfg.rollout.group_size} per step, "
          f"{cfg.updates_per_rollout} updates, eval {cfg.task.eval_size}x{cfg.eval.k}; running {cfg.steps} of "
          f"{base_steps} steps, {args.threads} thread(s); {arms} arms x {len(study.seeds)} seeds")
    rows: dict[str, list[dict]] = {m: [] for m in MODES}
    for i in range(args.pairs):
        for mode in (MODES if i % 2 == 0 else MODES[::-1]):
            load = os.getloadavg()[0]
            cmd = [sys.executable, __file__, "--child", mode, "--threads", str(args.threads)]
            if args.steps is not None:
                cmd += ["--steps", str(args.steps)]
            if args.sft_steps is not None:
                cmd += ["--sft-steps", str(args.sft_steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                sys.exit(f"{mode} run failed:\n{out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["full_s"] = r["outside_steps_s"] + base_steps * r["step_s"]
            rows[mode].append(r)
            print(f"pair {i + 1} {mode:>9}: run {r['run_s']:6.1f} s ({r['steps']} steps, {r['outside_steps_s']:5.1f} s "
                  f"outside them), step {r['step_s']:5.2f} s = generate {r['generate']:5.2f} + old_logp "
                  f"{r['old_logp']:5.3f} + update {r['update']:5.2f} + rest; VmHWM {r['vm_hwm_mb']:.0f} MB; "
                  f"load {load:.2f} -> {os.getloadavg()[0]:.2f}")
    med = {m: {k: statistics.median(r[k] for r in rows[m]) for k in ("full_s", "step_s", "old_logp", "vm_hwm_mb")}
           for m in MODES}
    runs = arms * len(study.seeds)
    for m in MODES:
        full = med[m]["full_s"]
        print(f"{m:>9}: {full:6.1f} s per run of {base_steps} steps, {arms * full / 60:5.1f} min per paired seed; "
              f"study of {runs} runs: {runs * full / 3600:4.2f} h at 1 worker, >= {runs * full / 2 / 3600:4.2f} h at 2")
    b, a = med["recompute"], med["auto"]
    print(f"from the rollout / recomputed (medians): run {a['full_s'] / b['full_s']:.3f}x, step "
          f"{a['step_s'] / b['step_s']:.3f}x, old_logp phase {a['old_logp']:.3f} s vs {b['old_logp']:.3f} s, "
          f"VmHWM {a['vm_hwm_mb']:.0f} vs {b['vm_hwm_mb']:.0f} MB; load now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
