"""Kill -9 a sweep mid-trial three times at random moments, re-run it, and count what survived.

    .venv/bin/python benchmarks/sweep_kill.py [--trials 8] [--kills 3] [--workers 2] [--seed 0]

Uses the fake trainer (tests/fake_trainer.py, 10 steps of 0.25 s each per trial) so the figure
is about the sweep's bookkeeping, not about training: it takes a minute or two instead of hours.
Each kill comes at a random moment after at least one more trial has completed.
The sweep runs as `dispo-wb sweep` would, in its own process; only that process gets SIGKILL,
so the script also checks that its workers and training processes died with it (none may be
left 10 s after the kill).

Bar (issue 4): exactly n_trials COMPLETE trials in the Optuna storage, each grid point once,
and as many FINISHED trial runs under the study's MLflow parent run.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SWEEP = "from tests.fake_cli import main; main()"  # dispo-wb whose sweeps train on tests/fake_trainer.py


def survivors(marker: str) -> list[int]:
    """Processes that carry this run's marker in their environment (workers and trainers inherit it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker.encode() in (proc / "environ").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[-60:]
    except OSError:
        return "?"


def completed_lines(log: Path) -> int:
    return sum(" COMPLETE " in line for line in log.read_text().splitlines()) if log.exists() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="sweep-kill-"))
    values = [round(0.05 * (i + 1), 2) for i in range(args.trials)]
    study_file = work / "kill.yaml"
    study_file.write_text(yaml.safe_dump({
        "base": {"experiment": "sweep-kill", "steps": 10, "run_name": "fake:sleep=0.25", "eval": {"every": 5},
                 "model": {"name": "micro-0.5m"}},
        "space": {"eps_pos_up": values}, "sampler": "grid", "pruner": "none", "workers": args.workers}))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    marker = f"SWEEP_KILL_{uuid.uuid4().hex}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), marker: "1"}
    cmd = [sys.executable, "-c", SWEEP, "sweep", str(study_file), "--tracking-uri", uri]
    log = open(work / "sweep.log", "w")
    orphans = 0
    t0 = time.perf_counter()
    for k in range(args.kills):
        done_before = completed_lines(work / "sweep.log")
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        # Let at least one trial finish after the restart (start-up takes seconds), then kill at a
        # random moment, which with 2 workers and ~3 s trials falls inside running trials.
        while completed_lines(work / "sweep.log") == done_before and proc.poll() is None \
                and time.perf_counter() - started < 120:
            time.sleep(0.2)
        time.sleep(rng.uniform(0.5, 3.0))
        wait = time.perf_counter() - started
        if proc.poll() is not None:
            print(f"kill {k + 1}: the sweep had already ended after {wait:.1f}s; use more --trials")
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(1.0)
        first = {pid: cmdline(pid) for pid in survivors(marker)}
        time.sleep(9.0)
        left = survivors(marker)
        if first:  # a forkserver still importing, a resource tracker: they exit on their own
            print(f"  1 s after the kill {len(first)} helper process(es) were still exiting: "
                  f"{', '.join(sorted({c.split()[-1][:40] for c in first.values()}))}")
        orphans += len(left)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        print(f"kill {k + 1}: SIGKILL {wait:.1f}s after start; trials completed so far: "
              f"{completed_lines(work / 'sweep.log')}; processes left behind: {len(left)}")
    final = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0

    import optuna
    from mlflow import MlflowClient

    from workbench import sweep
    from workbench.sweep.study_file import load_study_file

    study = load_study_file(study_file)
    trials = optuna.load_study(study_name=study.name, storage=sweep.open_storage(sweep.storage_url(study))).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    points = sorted(t.params["eps_pos_up"] for t in complete)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sweep-kill")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`dispo.kind` = 'study'")
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    finished = [c for c in children if c.info.status == "FINISHED"]
    states = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    print(f"final run exit code {final.returncode}; wall {wall:.0f}s; log {work / 'sweep.log'}")
    print(f"trials in storage: {states}; retried: {sum('retry_of' in t.user_attrs for t in trials)}")
    print(f"COMPLETE trials: {len(complete)} of n_trials {study.n_trials}; grid points each once: {points == sorted(values)}")
    print(f"MLflow trial runs under the parent: {len(children)}, FINISHED: {len(finished)}, "
          f"other: {sorted(c.info.status for c in children if c.info.status != 'FINISHED')}")
    print(f"orphan processes after kills: {orphans}")
    ok = len(complete) == study.n_trials == len(finished) and points == sorted(values) and orphans == 0
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
