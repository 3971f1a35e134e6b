"""Kills and faults: a run killed with -9, a full disk, runs started at once on a new store.

Run: pytest tests/test_faults.py   (about a minute on 2 cores: it starts real processes and kills them)
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from workbench.tracking import liveness
from workbench.tracking import stale as stale_runs
from workbench.tracking.store import open_client
from workbench.cli.app import app
from workbench.config import build_run_config
from workbench.names import TAG_FAILURE, TAG_HOST, TAG_PID

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

TINY = {"model": {"name": "micro-0.5m"}, "sft": {"enabled": False}, "steps": 6, "threads": 1, "seed": 3,
        "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 12}, "updates_per_rollout": 2,
        "rollout_lag": 2, "lr": 1e-3, "eval": {"every": 3, "k": 1, "limit": 4}, "checkpoint_every": 3,
        "sample_every": 100}


def _python(code: str, cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, **kw)


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# --- a killed run -------------------------------------------------------------------------------------


def test_writer_gone_tells_a_dead_process_from_a_live_one():
    assert liveness.writer_gone(liveness.writer_tags()) is None  # this process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    tags = {TAG_PID: str(child.pid), TAG_HOST: liveness.writer_tags()[TAG_HOST]}
    assert "is gone" in liveness.writer_gone(tags)
    assert liveness.writer_gone({**tags, TAG_HOST: "another-host"}) is None  # cannot judge another machine
    assert liveness.writer_gone({}) is None  # another tool's run
    recycled = {**liveness.writer_tags(), "dispo.proc_start": "1"}  # our pid, but not the process that wrote it
    assert "another process" in liveness.writer_gone(recycled)


def test_kill_9_then_resume_marks_the_run_killed_and_logs_each_step_once(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/m.db"
    # Steps slowed to 0.5 s so that the kill lands after step 4 was logged, past the step-3 checkpoint.
    child = _python(f"""
        import time
        from workbench.train import trainer
        from workbench.config import build_run_config
        real = trainer.response_metrics
        def slow(*a, **k):
            time.sleep(0.5)
            return real(*a, **k)
        trainer.response_metrics = slow
        trainer.train(build_run_config({TINY!r}), tracking_uri={uri!r}, progress=False)
        """, tmp_path)
    try:
        def logged_step_4():
            if not (tmp_path / "m.db").exists():
                return None
            c = open_client(uri)  # under the store's first-use lock: the child may be creating it
            exp = c.get_experiment_by_name("dispo-wb")
            runs = c.search_runs([exp.experiment_id]) if exp else []
            return runs and 4 in _steps(c, runs[0].info.run_id, "loss/policy") and runs[0]
        run = _wait_for(logged_step_4, 120, "step 4 to be logged")
    finally:
        child.kill()
        child.wait()
    c = MlflowClient(uri)
    run_id = run.info.run_id
    assert c.get_run(run_id).info.status == "RUNNING"  # what kill -9 leaves behind
    before = _steps(c, run_id, "loss/policy")
    assert before[-1] >= 4 and (tmp_path / ".cache/checkpoints" / run_id / "state.pt").exists()

    from workbench.train.launch import resume_config
    from workbench.train.trainer import train

    monkeypatch.chdir(tmp_path)  # checkpoints live under the working directory
    cfg = resume_config(run_id, uri, {})
    killed = c.get_run(run_id)
    assert killed.info.status == "KILLED"
    assert f"process {run.data.tags[TAG_PID]}" in killed.data.tags[TAG_FAILURE]
    result = train(cfg, tracking_uri=uri, resume_run_id=run_id, progress=False)
    assert result.status == "FINISHED" and result.steps_done == 6
    for key in ("loss/policy", "reward/mean", "regime/neg_up/clip_frac"):
        assert _steps(c, run_id, key) == [1, 2, 3, 4, 5, 6], key
    assert _steps(c, run_id, "eval/micro/accuracy") == [0, 3, 6]
    assert c.get_run(run_id).info.status == "FINISHED"


def test_resume_refuses_a_run_whose_process_is_alive(tmp_path):
    from workbench.errors import UserError
    from workbench.train.launch import resume_config
    from workbench.tracking import RunTracker

    uri = f"sqlite:///{tmp_path}/m.db"
    live = RunTracker(experiment="e", run_name="live", tracking_uri=uri)  # written by this (live) process
    with pytest.raises(UserError, match=f"is RUNNING in process {os.getpid()}"):
        resume_config(live.run_id, uri, {})
    assert MlflowClient(uri).get_run(live.run_id).info.status == "RUNNING"


def test_runs_clean_marks_only_runs_whose_process_is_gone(tmp_path):
    from workbench.tracking import RunTracker

    uri = f"sqlite:///{tmp_path}/m.db"
    child = _python(f"""
        import os
        from workbench.tracking import RunTracker
        print(RunTracker(experiment="e", run_name="orphan", tracking_uri={uri!r}).run_id, flush=True)
        os._exit(0)  # dies without ending its run, as kill -9 would
        """, tmp_path, stdout=subprocess.PIPE, text=True)
    orphan = child.communicate(timeout=120)[0].strip()
    live = RunTracker(experiment="e", run_name="live", tracking_uri=uri).run_id

    dry = runner.invoke(app, ["runs", "clean", "--tracking-uri", uri, "--dry-run"])
    assert dry.exit_code == 0 and f"would mark KILLED: {orphan}" in dry.output
    c = MlflowClient(uri)
    assert c.get_run(orphan).info.status == "RUNNING"

    out = runner.invoke(app, ["runs", "clean", "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    assert "1 run(s) marked KILLED, 1 left RUNNING" in out.output
    assert c.get_run(orphan).info.status == "KILLED"
    assert "is gone" in c.get_run(orphan).data.tags[TAG_FAILURE]
    assert c.get_run(live).info.status == "RUNNING"
    assert stale_runs.clean(uri) == ([], stale_runs.find_running(uri))  # nothing left to mark


# --- a full disk ----------------------------------------------------------------------------------------


def _no_space(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_ends_the_run_failed_with_one_line(tmp_path, monkeypatch):
    from workbench.train import trainer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(trainer.checkpoint, "save", _no_space)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"{TINY!r}".replace("'", '"'))  # JSON is YAML
    uri = f"sqlite:///{tmp_path}/m.db"
    out = runner.invoke(app, ["train", "--config", str(cfg), "--tracking-uri", uri, "--quiet"])
    assert out.exit_code == 1, out.output
    c = MlflowClient(uri)
    run = c.search_runs([c.get_experiment_by_name("dispo-wb").experiment_id])[0]
    assert out.output.strip().splitlines() == [
        f"error: run {run.info.run_id} failed after 3 steps: disk full: [Errno 28] No space left on device"]
    assert run.info.status == "FAILED" and run.data.tags[TAG_FAILURE].startswith("disk full")


def test_full_disk_under_the_store_still_gives_one_line(tmp_path, monkeypatch):
    import sqlite3

    from workbench import tracking
    from workbench.train import trainer

    def store_full(self, *a, **k):
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as e:
            raise RuntimeError("(sqlite3.OperationalError) database or disk is full") from e

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(trainer.checkpoint, "save", _no_space)
    monkeypatch.setattr(tracking.RunTracker, "finish", store_full)
    result = trainer.train(build_run_config(TINY), tracking_uri=f"sqlite:///{tmp_path}/m.db", progress=False)
    assert result.status == "FAILED"
    assert result.reason.startswith("disk full: [Errno 28]")
    assert "could not be marked FAILED either: (sqlite3.OperationalError) database or disk is full" in result.reason


# --- runs started at once on a new store ------------------------------------------------------------------


def test_four_runs_started_at_once_on_a_new_sqlite_store_all_open(tmp_path):
    uri = f"sqlite:///{tmp_path}/new.db"
    go = tmp_path / "go"
    procs = [_python(f"""
        import time
        from pathlib import Path
        import mlflow  # imported before the start line, so the four reach the store together
        from workbench.tracking import RunTracker
        while not Path({str(go)!r}).exists():
            time.sleep(0.005)
        RunTracker(experiment="e{i}", run_name="r", tracking_uri={uri!r}).finish()
        """, tmp_path, stderr=subprocess.PIPE, text=True) for i in range(4)]
    time.sleep(0.5)
    _wait_for(lambda: all(Path(f"/proc/{p.pid}").exists() for p in procs), 5, "the processes")
    time.sleep(8)  # let every process import mlflow and reach its start line
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], "\n".join(e[-500:] for e in errors)
    c = MlflowClient(uri)
    assert sorted(e.name for e in c.search_experiments()) == ["Default", "e0", "e1", "e2", "e3"]


# --- a killed sweep ------------------------------------------------------------------------------------


def _carrying(marker: str) -> list[int]:
    """Live processes with `marker` in their environment (a sweep's workers, fork servers and trainers)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "environ").read_bytes() and \
                        (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_of_a_sweep_leaves_no_process_that_writes(tmp_path, workers):
    import uuid

    import yaml

    study = tmp_path / "orphans.yaml"
    study.write_text(yaml.safe_dump({
        "base": {"experiment": "orphans", "steps": 200, "run_name": "fake:sleep=0.3", "eval": {"every": 1},
                 "model": {"name": "micro-0.5m"}},
        "space": {"eps_pos_up": [0.1, 0.2, 0.3, 0.4]}, "sampler": "grid", "pruner": "none", "workers": workers}))
    uri = f"sqlite:///{tmp_path}/m.db"
    marker = f"DISPO_ORPHAN_{uuid.uuid4().hex}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), marker: "1"}
    sweep = subprocess.Popen([sys.executable, "-m", "tests.fake_cli", "sweep", str(study), "--tracking-uri", uri],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def count(sql: str) -> int:
        import sqlite3

        try:
            with sqlite3.connect(tmp_path / "m.db") as db:
                return db.execute(sql).fetchone()[0]
        except sqlite3.OperationalError:  # the schema is still being created
            return 0

    def metric_rows() -> int:
        return count("select count(*) from metrics")

    try:
        _wait_for(lambda: (tmp_path / "m.db").exists() and metric_rows() >= 5 * workers, 120, "trials to log metrics")
    finally:
        sweep.kill()
        sweep.wait()
    rows = metric_rows()
    time.sleep(3)  # a trainer that outlived the sweep logs a step every 0.3 s, then fails on the dead pipe
    try:
        assert metric_rows() == rows  # no process of the dead sweep writes after the kill
        assert count("select count(*) from runs where status = 'FAILED'") == 0  # nor ends its run
        # Every one of them exits: the trainers at once, fork servers and resource trackers once they see EOF.
        _wait_for(lambda: not _carrying(marker), 15, "the sweep's processes to exit")
    finally:
        for pid in _carrying(marker):
            os.kill(pid, signal.SIGKILL)
