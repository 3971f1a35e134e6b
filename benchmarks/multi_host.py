"""Many hosts on real services: PostgreSQL (Optuna) + `mlflow server`, with workers killed on purpose.

Prints (bar of issue 12):
1. a 6-trial study run by 3 worker processes in separate folders sharing only the two URLs
   (the Optuna URL carries the password), one worker SIGKILLed mid-trial and a second one
   later: trials COMPLETE / duplicated / lost, MLflow child runs vs trials, retries, and
   whether the password turns up in the databases, the artifact root, the server log or any
   worker folder (expected: 6 / 0 / 0, children = trials + killed runs, not found);
2. the same study without kills on the journal file (one sweep, 3 workers) vs on PostgreSQL
   (3 separate processes), wall time each;
3. `report` of a 64-trial study (200 steps a run) against the server vs against SQLite, and
   the server's per-(run, key) path it replaces; medians of alternated runs.

Training is the fake trainer (tests/fake_trainer.py, sleeps per step): the figures are about
coordination, not models. Run from the repository root (needs Debian's postgresql):
    .venv/bin/python benchmarks/multi_host.py [--report-steps 200] [--repeats 3]
Uses DISPO_SERVICES_DIR's stack when set, else starts one in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the fake trainer and fixtures

import optuna  # noqa: E402
import yaml  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from tests import services_stack as ss  # noqa: E402
from workbench.services import stack as services  # noqa: E402

FAKE_CLI = [sys.executable, "-m", "tests.fake_cli"]  # dispo-wb whose sweeps train on tests/fake_trainer.py
SPACE = {"eps_neg_up": [0.1, 0.2, 0.4], "eps_pos_up": [0.2, 1.0]}  # 6 trials
GRID64 = {"eps_pos_up": [0.1, 0.2, 0.3, 1.0], "eps_pos_down": [0.1, 0.2, 0.5, 1.0], "eps_neg_up": [0.01, 0.2],
          "eps_neg_down": [0.05, 0.2]}
HEARTBEAT = {"DISPO_HEARTBEAT_S": "1", "DISPO_GRACE_S": "5"}


def write_study(folder: Path, name: str, sleep: float, steps: int) -> Path:
    data = {"name": name, "base": {"experiment": f"exp-{name}", "steps": steps, "model": {"name": "micro-0.5m"},
                                   "eval": {"every": 2}, "run_name": f"fake:sleep={sleep}"},
            "space": SPACE, "sampler": "grid", "pruner": "none", "workers": 1}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def worker(folder: Path, argv: list[str]) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([*FAKE_CLI, *argv], cwd=folder, stdout=open(folder / "out.log", "w"),
                            stderr=open(folder / "err.log", "w"), env=ss.worker_env(**HEARTBEAT))


def study_trials(stack, name: str) -> list:
    try:
        return optuna.load_study(study_name=name, storage=stack.storage_url).get_trials(deepcopy=False)
    except KeyError:
        return []


def wait_running(stack, name: str, n: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = [t for t in study_trials(stack, name) if t.state == TrialState.RUNNING]
        if sum("mlflow_run_id" in t.user_attrs for t in running) >= n:  # inside its trial run
            time.sleep(1.0)
            return
        time.sleep(0.2)
    raise SystemExit(f"{n} trials of {name} never ran at once")


def kill_run(stack, root: Path, sleep: float, steps: int) -> None:
    from mlflow import MlflowClient

    name = f"multihost-kill-{int(time.time())}"  # a reused stack keeps older studies
    study = write_study(root, name, sleep, steps)
    url, secret = ss.storage_with_password(stack), ss.password(stack)
    argv = ["sweep", str(study), "--storage", url, "--tracking-uri", stack.tracking_uri, "--workers", "1"]
    t0 = time.perf_counter()
    procs = [worker(root / f"host{i}", argv) for i in range(3)]
    wait_running(stack, name, 3)
    procs[0].send_signal(signal.SIGKILL)
    print("killed host0 (SIGKILL) with 3 trials running", flush=True)
    time.sleep(2 * sleep * steps / 3)
    wait_running(stack, name, 2)
    procs[1].send_signal(signal.SIGKILL)
    print("killed host1 (SIGKILL) mid-trial", flush=True)
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    ts = study_trials(stack, name)
    complete = [t for t in ts if t.state == TrialState.COMPLETE]
    points = [tuple(sorted(t.params.items())) for t in complete]
    expected = {tuple(sorted({"eps_neg_up": a, "eps_pos_up": b}.items())) for a in SPACE["eps_neg_up"]
                for b in SPACE["eps_pos_up"]}
    client = MlflowClient(stack.tracking_uri)
    exp = client.get_experiment_by_name(f"exp-{name}")
    parents = client.search_runs([exp.experiment_id], "tags.`dispo.kind` = 'study'")
    kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    status = {s: sum(k.info.status == s for k in kids) for s in ("FINISHED", "KILLED", "RUNNING", "FAILED")}
    retries = [k for k in kids if "dispo.retry_of" in k.data.tags]
    print(f"exit codes {codes}; wall {wall:.1f} s")
    print(f"trials COMPLETE / duplicated / lost: {len(complete)} / {len(points) - len(set(points))} / "
          f"{len(expected - set(points))}  (FAIL {sum(t.state == TrialState.FAIL for t in ts)}, "
          f"still RUNNING/WAITING {sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in ts)})")
    print(f"MLflow: {len(parents)} parent run(s); {len(kids)} child runs for {len(ts)} Optuna trials "
          f"({status}); {len(retries)} retry runs naming the trial they retry: "
          f"{sorted(k.data.tags['dispo.retry_of'] for k in retries)}")
    hits = [str(p) for p in ss.grep_tree(root, secret) + ss.grep_tree(stack.folder / "artifacts", secret)]
    in_db = secret in ss.dump_databases(stack)
    in_log = secret in (stack.folder / "mlflow.log").read_text(errors="replace")
    print(f"password found: databases {in_db}, server log {in_log}, files {hits or 'none'}")


def timing_run(stack, root: Path, sleep: float, steps: int) -> None:
    tag = str(int(time.time()))
    journal_study = write_study(root / "journal", f"multihost-journal-{tag}", sleep, steps)
    t0 = time.perf_counter()
    p = worker(root / "journal", ["sweep", str(journal_study), "--workers", "3",
                                  "--tracking-uri", stack.tracking_uri])
    assert p.wait() == 0, (root / "journal" / "err.log").read_text()[-2000:]
    journal_s = time.perf_counter() - t0
    pg_study = write_study(root / "pg", f"multihost-pg-{tag}", sleep, steps)
    argv = ["sweep", str(pg_study), "--storage", ss.storage_with_password(stack), "--tracking-uri", stack.tracking_uri,
            "--workers", "1"]
    t0 = time.perf_counter()
    procs = [worker(root / "pg" / f"host{i}", argv) for i in range(3)]
    codes = [q.wait() for q in procs]
    pg_s = time.perf_counter() - t0
    print(f"same 6-trial study, 3 workers: journal file {journal_s:.1f} s, PostgreSQL (3 processes) {pg_s:.1f} s "
          f"(exit codes {codes}); both log to the MLflow server")


def report_run(stack, root: Path, steps: int, repeats: int) -> None:
    import logging

    from mlflow import MlflowClient

    from tests.report_fixtures import experiment, log_study
    from workbench import tracking
    from workbench.tracking import histories
    from workbench.tracking.store import reading_client
    from workbench.report.page import make_report

    logging.getLogger("alembic").setLevel(logging.WARNING)
    name = f"bench64-{int(time.time())}"
    stores = {"sqlite": f"sqlite:///{root / 'mlflow.db'}", "server": stack.tracking_uri}
    for label, uri in stores.items():
        t = time.perf_counter()
        client = MlflowClient(uri)
        log_study(client, experiment(client, "bench64"), root / f"{label}.journal", name=name, grid=GRID64,
                  seeds=(0,), steps=steps, directions=("maximize eval/micro/accuracy", "minimize collapse"))
        print(f"fabricated the 64-trial study ({steps} steps a run) in {label}: {time.perf_counter() - t:.0f} s",
              flush=True)
    times: dict[str, list[float]] = {"sqlite": [], "server": [], "server per-(run,key) histories": []}
    for _ in range(repeats):  # alternated, so load drifts hit every store alike
        for label, uri in stores.items():
            t = time.perf_counter()
            make_report(name, tracking_uri=uri, out_dir=root / f"reports-{label}", png=False, log_artifact=False)
            times[label].append(time.perf_counter() - t)
        target = tracking.resolve_target(name, stack.tracking_uri)
        client = reading_client(stack.tracking_uri)
        t = time.perf_counter()
        histories.client_metric_rows(client, target.runs)
        times["server per-(run,key) histories"].append(time.perf_counter() - t)
    target = tracking.resolve_target(name, stack.tracking_uri)
    keys = {k for r in target.runs for k in r.metric_keys}
    t = time.perf_counter()
    histories.server_metric_rows(reading_client(stack.tracking_uri), target.runs)
    bulk_s = time.perf_counter() - t
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"report of the 64-trial study, median of {repeats}: SQLite {med['sqlite']:.1f} s, server "
          f"{med['server']:.1f} s (ratio {med['server'] / med['sqlite']:.2f}); histories from the server: "
          f"bulk {bulk_s:.1f} s in {len(keys)} requests vs {med['server per-(run,key) histories']:.1f} s in "
          f"{sum(len(r.metric_keys) for r in target.runs)} per-(run, key) requests")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sleep", type=float, default=0.5, help="fake trainer: seconds per step")
    ap.add_argument("--steps", type=int, default=6, help="fake trainer: steps per run")
    ap.add_argument("--report-steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", nargs="*", default=[], choices=["kill", "timing", "report"])
    args = ap.parse_args()
    if (why := ss.missing()) is not None:
        raise SystemExit(why)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp, ss.running_stack() as stack:
        os.environ["PGPASSFILE"] = str(stack.pgpass.resolve())  # this process reads the results
        print(f"stack: {stack.storage_url}, {stack.tracking_uri}; load {os.getloadavg()[0]:.1f}", flush=True)
        if "kill" not in args.skip:
            kill_run(stack, Path(tmp) / "kill", args.sleep, args.steps)
        if "timing" not in args.skip:
            timing_run(stack, Path(tmp) / "timing", args.sleep, args.steps)
        if "report" not in args.skip:
            report_run(stack, Path(tmp) / "report", args.report_steps, args.repeats)
        print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
