"""Outages mid-sweep against a real stack: the MLflow server killed and restarted, PostgreSQL restarted.

The stack is this module's own (started in a temporary folder, never the CI one), because its
services are stopped on purpose. The sweep trains on tests/fake_trainer.py: each seed run logs
`eval/micro/accuracy` at steps 0, 2 and 4, each trial run its value, so what the stores must
hold at the end is known exactly. Before each outage and after it the test counts the COMPLETE
trials (Optuna) and the metric points (MLflow's `metrics` table, read with SQL, not through
the server) and checks that every trial and point counted before is still there after.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests import services_stack as ss
from workbench.services import stack as services

_why = ss.missing()
if _why and os.environ.get("CI") == "true":
    raise RuntimeError(f"CI must run the outage tests: {_why}")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why is not None, reason=f"no PostgreSQL here: {_why}")]

FAKE_CLI = [sys.executable, "-m", "tests.fake_cli"]
EVAL_KEY = "eval/micro/accuracy"
EVAL_STEPS = {0, 2, 4}  # steps=4, eval.every=2 (tests/services_stack.write_study)


@pytest.fixture(scope="module")
def stack():
    """A stack of this module's own, with one MLflow worker (a restart under load then takes half as long)."""
    tmp = Path(tempfile.mkdtemp(prefix="dispo-outage-"))
    os.chmod(tmp, 0o755)  # PostgreSQL runs as `postgres` under root and must reach its folder
    real = services.MLFLOW_WORKERS
    services.MLFLOW_WORKERS = 1
    guard = ss.reaper(tmp / "stack", tmp)  # stops the stack should this test run be killed
    try:
        yield services.up(tmp / "stack", pg_port=ss.free_port(), mlflow_port=ss.free_port())
    finally:
        try:
            if (tmp / "stack" / "services.env").is_file():
                services.down(tmp / "stack")
        finally:
            services.MLFLOW_WORKERS = real
            shutil.rmtree(tmp, ignore_errors=True)
            ss.end_reaper(guard)


def _trials(stack, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, on a fresh connection (a pooled one would not outlive a database restart)."""
    from sqlalchemy.pool import NullPool

    os.environ["PGPASSFILE"] = str(stack.pgpass.resolve())
    storage = optuna.storages.RDBStorage(stack.storage_url, engine_kwargs={"poolclass": NullPool})
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []
    finally:
        storage.engine.dispose()


def _rows(stack, query: str, name: str) -> list[tuple]:
    """The rows of `query` (its %s: the study's experiment), read with SQL from the stack's MLflow database."""
    import psycopg

    with psycopg.connect(host=stack.host, port=stack.pg_port, user=services.ROLE, dbname="mlflow",
                         password=ss.password(stack)) as conn:
        return conn.execute(query, (f"exp-{name}",)).fetchall()


def _points(stack, name: str) -> list[tuple]:
    """Every metric point of the study's experiment: (run, kind of run, key, step, value)."""
    return _rows(stack, "select m.run_uuid, coalesce(t.value, ''), m.key, m.step, m.value from metrics m "
                 "join runs r on r.run_uuid = m.run_uuid join experiments e on e.experiment_id = r.experiment_id "
                 "left join tags t on t.run_uuid = r.run_uuid and t.key = 'dispo.kind' where e.name = %s", name)


def _runs(stack, name: str) -> list[tuple]:
    """(run, kind, status) of every run of the study's experiment."""
    return _rows(stack, "select r.run_uuid, coalesce(t.value, ''), r.status from runs r "
                 "join experiments e on e.experiment_id = r.experiment_id "
                 "left join tags t on t.run_uuid = r.run_uuid and t.key = 'dispo.kind' where e.name = %s", name)


class Sweep:
    """One `dispo-wb sweep` process (fake trainer) with its output in files."""

    def __init__(self, stack, folder: Path, name: str, space: dict, sleep: float, workers: int, **env: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.name, self.stack = folder, name, stack
        study = ss.write_study(folder, name, space, sleep=sleep)
        self.proc = subprocess.Popen(
            [*FAKE_CLI, "sweep", str(study), "--storage", stack.storage_url, "--tracking-uri", stack.tracking_uri,
             "--workers", str(workers)], cwd=folder, stdout=open(folder / "out.log", "w"), stderr=open(folder / "err.log", "w"),
            env=ss.worker_env(PGPASSFILE=str(stack.pgpass.resolve()), DISPO_HEARTBEAT_S="2", **env))

    def err(self) -> str:
        return (self.folder / "err.log").read_text(errors="replace")

    def logs(self) -> str:
        states = [(t.number, t.state.name) for t in _trials(self.stack, self.name)] if self.stack_up() else "?"
        return (f"trials {states}\n--- out:\n{(self.folder / 'out.log').read_text()[-2000:]}\n"
                f"--- err:\n{self.err()[-4000:]}")

    def stack_up(self) -> bool:
        return services.pg_running(self.stack)

    def wait_mid_trial(self, complete_at_least: int, timeout_s: float = 300) -> None:
        """Until `complete_at_least` trials are COMPLETE and another is training (its run open)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.logs()
            ts = _trials(self.stack, self.name)
            done = sum(t.state == TrialState.COMPLETE for t in ts)
            if done >= complete_at_least and any(t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs
                                                 for t in ts):
                time.sleep(0.7)  # into the trainer's steps
                return
            time.sleep(0.3)
        pytest.fail(f"no trial was training after {complete_at_least} complete; {self.logs()}")

    def wait_for_line(self, pattern: str, after: int, timeout_s: float) -> float:
        """Seconds until stderr, past its first `after` characters, holds `pattern`."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if re.search(pattern, self.err()[after:]):
                return time.monotonic() - t0
            time.sleep(0.1)
        pytest.fail(f"no line {pattern!r} within {timeout_s} s; {self.logs()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _snapshot(stack, name: str) -> tuple[dict[int, float], set[tuple]]:
    complete = {t.number: t.value for t in _trials(stack, name) if t.state == TrialState.COMPLETE}
    points = _points(stack, name)
    assert len(points) == len(set(points)), "a metric point was logged twice"
    return complete, set(points)


def _still_there(before: tuple[dict[int, float], set[tuple]], after: tuple[dict[int, float], set[tuple]]) -> None:
    """Every trial COMPLETE before is COMPLETE after with its value; every point logged before is there."""
    (trials_before, points_before), (trials_after, points_after) = before, after
    assert trials_before, "the outage was meant to come after a trial had finished"
    assert {n: trials_after.get(n) for n in trials_before} == trials_before  # the same count, the same values
    assert len(points_before & points_after) == len(points_before)


def test_a_sweep_waits_out_a_restart_of_the_mlflow_server_and_of_postgresql_and_loses_nothing(stack, tmp_path):
    name = f"outage-{uuid.uuid4().hex[:8]}"
    space = {"eps_neg_up": [0.1, 0.2, 0.4], "eps_pos_up": [0.2, 1.0]}
    # Patience longer than an MLflow server restart takes on a loaded machine (about 30 s idle).
    sweep = Sweep(stack, tmp_path / "host", name, space, sleep=1.0, workers=2, DISPO_OUTAGE_S="400")
    try:
        # 1. The MLflow server killed while a trial trains, restarted a few seconds later.
        sweep.wait_mid_trial(complete_at_least=1)
        before = _snapshot(stack, name)
        seen = len(sweep.err())
        services.mlflow_stop(stack)
        took = sweep.wait_for_line(r"warning: the MLflow server \S+ does not answer", seen, timeout_s=60)
        time.sleep(max(0.0, 5 - took))
        services.mlflow_start(stack)
        sweep.wait_for_line(r"the MLflow server \S+ answers again", seen, timeout_s=120)
        after_mlflow = _snapshot(stack, name)
        _still_there(before, after_mlflow)

        # 2. PostgreSQL (Optuna's storage and the server's backend store) restarted while a trial trains.
        sweep.wait_mid_trial(complete_at_least=len(after_mlflow[0]) + 1)
        before = _snapshot(stack, name)
        seen = len(sweep.err())
        services.pg_stop(stack)
        sweep.wait_for_line(r"warning: the (Optuna storage|MLflow server) \S+ does not answer", seen, timeout_s=60)
        time.sleep(3)
        services.pg_start(stack)
        assert sweep.proc.wait(timeout=400) == 0, sweep.logs()
        sweep.wait_for_line(r"answers again", seen, timeout_s=1)
    finally:
        sweep.kill()
    trials_after, points_after = after = _snapshot(stack, name)
    _still_there(before, after)
    _still_there(after_mlflow, after)

    # Nothing lost, nothing twice: every trial once, COMPLETE, never retried; each MLflow run once, finished.
    ts = _trials(stack, name)
    assert sorted(t.state.name for t in ts) == ["COMPLETE"] * 6, sweep.logs()
    assert len({tuple(sorted(t.params.items())) for t in ts}) == 6
    runs = _runs(stack, name)
    assert sorted((kind, status) for _, kind, status in runs) == sorted(
        [("study", "FINISHED")] + [("trial", "FINISHED")] * 6 + [("train", "FINISHED")] * 6)
    assert {t.user_attrs["mlflow_run_id"] for t in ts} == {r for r, kind, _ in runs if kind == "trial"}
    train_runs = {r for r, kind, _ in runs if kind == "train"}
    per_run = {r: sorted(step for run, _, key, step, _ in points_after if run == r and key == EVAL_KEY)
               for r in train_runs}
    assert all(steps == sorted(EVAL_STEPS) for steps in per_run.values()), per_run
    trial_points = [p for p in points_after if p[1] == "trial"]
    assert len(trial_points) == 6  # one value per trial run
    assert len([p for p in points_after if p[1] in ("train", "trial")]) == 6 * len(EVAL_STEPS) + 6


def test_an_mlflow_outage_longer_than_the_patience_is_said_at_once_and_ends_the_sweep_on_time(stack, tmp_path):
    """Last in the module: it leaves the server down. MLflow's own retries would take about 4 minutes."""
    patience = 6
    name = f"long-{uuid.uuid4().hex[:8]}"
    sweep = Sweep(stack, tmp_path / "host", name, {"eps_neg_up": [0.1, 0.2, 0.4]}, sleep=0.5, workers=2,
                  DISPO_OUTAGE_S=str(patience))
    try:
        sweep.wait_mid_trial(complete_at_least=0)
        seen = len(sweep.err())
        services.mlflow_stop(stack)
        warned = sweep.wait_for_line(r"warning: the MLflow server \S+ does not answer", seen, timeout_s=patience)
        gave_up = sweep.wait_for_line(rf"the MLflow server \S+ was unreachable for {patience} s", seen,
                                      timeout_s=patience + 20)
        assert warned < patience and gave_up < patience + 20
        code = sweep.proc.wait(timeout=10 * patience + 60)  # the trainer and the sweep process each wait once
    finally:
        sweep.kill()
    assert code != 0
    last = sweep.err().strip().splitlines()[-1]
    assert re.fullmatch(rf"error: the MLflow server {re.escape(stack.tracking_uri)} was unreachable for {patience} s "
                        r"during \w+ \(connection refused\); .*", last), sweep.logs()
    assert ss.password(stack) not in sweep.err() + (sweep.folder / "out.log").read_text()
    assert "Traceback" not in sweep.err(), sweep.err()  # a worker process that gives up says one line too
