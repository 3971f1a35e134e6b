"""Load: one study swept by many worker processes on one PostgreSQL and one MLflow server.

A `--trials`-trial grid study of the fake trainer (tests/fake_trainer.py: no model, no sleep,
`--steps` steps, an eval point every 2) is swept by `--coordinators` `dispo-wb sweep` processes,
each with `--workers` / `--coordinators` worker processes, in folders of their own, sharing only
the two URLs of a stack started by `dispo-wb services up` (in a temporary folder, ports free).
Prints:
- trials COMPLETE / FAIL / duplicated, exit codes, wall time, trials per minute (overall and
  between the first and the last trial's end), peak database connections against
  `max_connections`, peak memory of the machine above its start, and every line of the sweeps'
  output that speaks of a connection problem (expected: none);
- the time and peak memory (max RSS) of `dispo-wb sweep status` and of `dispo-wb report` of
  that study (goal: under 60 s each);
- the load average before, during (median and peak of the 1-minute figure) and after.

Run from the repository root, under nice on a shared machine:
    nice -n 19 .venv/bin/python benchmarks/sweep_load.py --trials 1000 --workers 24 --coordinators 6
The stack is stopped and removed at the end, or by a reaper process if this one is killed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the fake trainer and the reaper

import yaml  # noqa: E402

from tests import services_stack as ss  # noqa: E402
from workbench.services import stack as services  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAKE_CLI = [sys.executable, "-m", "tests.fake_cli"]  # dispo-wb whose sweeps train on tests/fake_trainer.py
DISPO_WB = [sys.executable, "-m", "workbench.cli"]
BOUNDS = ("eps_pos_up", "eps_pos_down", "eps_neg_up", "eps_neg_down")
# Lines that would mean a connection problem (PostgreSQL out of slots, a refused or dropped connection, an outage).
TROUBLE = re.compile(r"too many clients|remaining connection slots|connection refused|could not connect|"
                     r"server closed the connection|does not answer|was unreachable|OperationalError|"
                     r"Traceback|ended with|error:", re.IGNORECASE)


def grid(n: int) -> dict[str, list[float]]:
    """A grid of at least `n` points over the four bounds (as few values per bound as that takes)."""
    per = math.ceil(n ** 0.25)
    while True:
        sizes = [per] * 4
        for i in range(4):  # drop values from the last bounds while the grid stays big enough
            while sizes[i] > 1 and math.prod(sizes) // sizes[i] * (sizes[i] - 1) >= n:
                sizes[i] -= 1
        if math.prod(sizes) >= n:
            break
        per += 1
    return {b: [round(0.05 + 0.05 * j, 2) for j in range(k)] for b, k in zip(BOUNDS, sizes)}


def write_study(folder: Path, name: str, n: int, steps: int) -> Path:
    data = {"name": name, "base": {"experiment": f"exp-{name}", "steps": steps, "model": {"name": "micro-0.5m"},
                                   "eval": {"every": 2}, "run_name": "fake:sleep=0"},
            "space": grid(n), "sampler": "grid", "n_trials": n, "pruner": "none", "workers": 1}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def used_memory_mb() -> float:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kb = lambda k: int(info[k].split()[0])  # noqa: E731
    return (kb("MemTotal") - kb("MemAvailable")) / 1024


class Sampler(threading.Thread):
    """Every second: database connections by database, and the machine's used memory."""

    def __init__(self, stack):
        super().__init__(daemon=True)
        self.stack, self.stop = stack, threading.Event()
        self.peak_conn: dict[str, int] = {}
        self.peak_total = 0
        self.base_mem = self.peak_mem = used_memory_mb()
        self.load: list[float] = []  # 1-minute load average, every second

    def run(self) -> None:
        import psycopg

        conn = psycopg.connect(host=self.stack.host, port=self.stack.pg_port, user=services.ROLE, dbname="postgres",
                               password=ss.password(self.stack), autocommit=True)
        try:
            while not self.stop.wait(1.0):
                rows = conn.execute("select coalesce(datname, '-'), count(*) from pg_stat_activity "
                                    "where backend_type = 'client backend' group by 1").fetchall()
                for db, n in rows:
                    self.peak_conn[db] = max(self.peak_conn.get(db, 0), n)
                self.peak_total = max(self.peak_total, sum(n for _, n in rows))
                self.peak_mem = max(self.peak_mem, used_memory_mb())
                self.load.append(os.getloadavg()[0])
        finally:
            conn.close()


def timed(argv: list[str], cwd: Path, env: dict[str, str], timeout_s: float) -> dict:
    """Wall seconds, max RSS (MB) and the end of the output of one command (`/usr/bin/time`)."""
    t0 = time.monotonic()
    out = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB=%M", *argv], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout_s)
    wall = time.monotonic() - t0
    rss = re.findall(r"MAXRSS_KB=(\d+)", out.stderr)
    err = re.sub(r"MAXRSS_KB=\d+\n?", "", out.stderr)
    return {"code": out.returncode, "wall_s": round(wall, 1), "max_rss_mb": int(rss[-1]) // 1024 if rss else None,
            "stdout_lines": len(out.stdout.splitlines()), "stdout_tail": out.stdout[-600:], "stderr_tail": err[-1500:]}


def counts(stack, name: str) -> dict:
    import optuna

    os.environ["PGPASSFILE"] = str(stack.pgpass.resolve())
    ts = optuna.load_study(study_name=name, storage=stack.storage_url).get_trials(deepcopy=False)
    by_state: dict[str, int] = {}
    for t in ts:
        by_state[t.state.name] = by_state.get(t.state.name, 0) + 1
    complete = [t for t in ts if t.state.name == "COMPLETE"]
    ends = sorted(t.datetime_complete.timestamp() for t in complete if t.datetime_complete)
    return {"states": by_state, "duplicated": len(complete) - len({tuple(sorted(t.params.items())) for t in complete}),
            "first_end": ends[0] if ends else None, "last_end": ends[-1] if ends else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=24, help="worker processes in all")
    ap.add_argument("--coordinators", type=int, default=6, help="`dispo-wb sweep` processes sharing them")
    ap.add_argument("--steps", type=int, default=2, help="fake training steps a run (eval points at 0, 2, ...)")
    ap.add_argument("--timeout", type=float, default=6 * 3600, help="give up on the sweeps after this many s")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="leave the stack running (its folder is printed)")
    args = ap.parse_args()
    if args.workers % args.coordinators:
        raise SystemExit("--workers must be a multiple of --coordinators")
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="dispo-load-"))
    os.chmod(tmp, 0o755)  # PostgreSQL runs as `postgres` under root and must reach its folder
    folder = tmp / "stack"
    guard = ss.reaper(folder, tmp)  # stops the stack should this benchmark be killed
    env = ss.worker_env()
    try:
        pg_port, mlflow_port = ss.free_port(), ss.free_port()
        t0 = time.monotonic()
        up = subprocess.run([*DISPO_WB, "services", "up", "--dir", str(folder), "--pg-port", str(pg_port),
                             "--mlflow-port", str(mlflow_port)], cwd=ROOT, env=env, capture_output=True, text=True)
        if up.returncode != 0:
            raise SystemExit(f"services up failed: {up.stderr[-2000:]}")
        stack = services.Stack.load(folder)
        print(f"services up: {time.monotonic() - t0:.0f} s; max_connections {services.MAX_CONNECTIONS} "
              f"(sized for {services.WORKER_PROCESSES} sweep processes)", flush=True)
        env = ss.worker_env(PGPASSFILE=str(stack.pgpass.resolve()))
        name = f"load{args.trials}"
        study = write_study(tmp / "study", name, args.trials, args.steps)
        sampler = Sampler(stack)
        sampler.start()
        per = args.workers // args.coordinators
        t_start = time.time()
        sweeps = []
        for i in range(args.coordinators):
            home = tmp / f"host{i}"
            home.mkdir()
            sweeps.append(subprocess.Popen(
                [*FAKE_CLI, "sweep", str(study), "--storage", stack.storage_url, "--tracking-uri", stack.tracking_uri,
                 "--workers", str(per)], cwd=home, env=env, stdout=open(home / "out.log", "w"),
                stderr=subprocess.STDOUT))
        deadline = time.monotonic() + args.timeout
        while any(p.poll() is None for p in sweeps) and time.monotonic() < deadline:
            time.sleep(5)
        for p in sweeps:
            if p.poll() is None:
                p.kill()
            p.wait()
        wall = time.time() - t_start
        sampler.stop.set()
        sampler.join()
        c = counts(stack, name)
        complete = c["states"].get("COMPLETE", 0)
        steady = ((c["last_end"] - c["first_end"]) / 60) if c["first_end"] and c["last_end"] > c["first_end"] else None
        trouble = [f"host{i}: {line.strip()[:200]}" for i in range(args.coordinators)
                   for line in (tmp / f"host{i}" / "out.log").read_text(errors="replace").splitlines()
                   if TROUBLE.search(line)]
        sweep = {"trials": args.trials, "workers": args.workers, "coordinators": args.coordinators,
                 "exit_codes": [p.returncode for p in sweeps], "states": c["states"], "duplicated": c["duplicated"],
                 "wall_s": round(wall, 1), "trials_per_min": round(complete / (wall / 60), 1),
                 "trials_per_min_first_to_last_end": round((complete - 1) / steady, 1) if steady else None,
                 "start_to_first_trial_end_s": round(c["first_end"] - t_start, 1) if c["first_end"] else None,
                 "peak_connections": sampler.peak_conn, "peak_connections_total": sampler.peak_total,
                 "max_connections": services.MAX_CONNECTIONS,
                 "peak_memory_above_start_mb": round(sampler.peak_mem - sampler.base_mem),
                 "connection_trouble_lines": len(trouble),
                 "load_1min_median_max": (round(sorted(sampler.load)[len(sampler.load) // 2], 1),
                                          round(max(sampler.load), 1)) if sampler.load else None}
        print(json.dumps({"sweep": sweep}, indent=1), flush=True)
        for line in trouble[:20]:
            print("  trouble:", line)
        server_log = (folder / "mlflow.log").read_text(errors="replace").splitlines()
        print(f"MLflow server log: {sum(' ERROR ' in x or 'Traceback' in x for x in server_log)} error lines, "
              f"{sum(' WARNING ' in x for x in server_log)} warnings", flush=True)

        reads = {}
        out = tmp / "reports"
        reads["sweep status"] = timed([*DISPO_WB, "sweep", "status", name, "--storage", stack.storage_url],
                                      tmp, {**env, "COLUMNS": "200"}, timeout_s=1800)
        reads["report"] = timed([*DISPO_WB, "report", name, "--tracking-uri", stack.tracking_uri, "--no-png",
                                 "--no-log-artifact", "--out-dir", str(out)], tmp, env, timeout_s=1800)
        for what, r in reads.items():
            print(f"{what}: exit {r['code']}, {r['wall_s']} s, max RSS {r['max_rss_mb']} MB, "
                  f"{r['stdout_lines']} lines of output", flush=True)
            if r["code"]:
                print(r["stderr_tail"])
        load_after = os.getloadavg()
        print(f"load average (1, 5, 15 min) before {tuple(round(x, 2) for x in load_before)}, "
              f"after {tuple(round(x, 2) for x in load_after)} on {os.cpu_count()} cores")
        if args.json:
            args.json.write_text(json.dumps({"sweep": sweep, "reads": {k: {x: v for x, v in r.items() if "tail" not in x}
                                                                        for k, r in reads.items()},
                                             "load_before": load_before, "load_after": load_after}, indent=1))
    finally:
        if args.keep:
            ss.end_reaper(guard)
            print(f"kept: the stack in {folder} (dispo-wb services down --dir {folder}), the sweeps' folders in {tmp}")
        else:
            try:
                subprocess.run([*DISPO_WB, "services", "down", "--dir", str(folder)], cwd=ROOT, env=ss.worker_env(),
                               capture_output=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                ss.end_reaper(guard)


if __name__ == "__main__":
    main()
