"""Kills and faults: a run killed with -9, a full disk, runs started at once on a new store.

Run: pytest tests/test_faults.py   (about a minute on 2 cores: it starts real processes and kills them)
"""

from __future__ import annotations

import errno
import json
import os
import re
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
    assert killed.info.status == "KILLED"  # marked so (`process N is gone`), that reason dropped as it resumes
    assert TAG_FAILURE not in killed.data.tags
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


# --- the last bad inputs ----------------------------------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound then closed: nothing listens there now
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_key_given_twice_in_a_run_config_or_study_file_names_the_key_and_both_lines(tmp_path, monkeypatch):
    from workbench.config import ConfigError, read_yaml
    from workbench.sweep.study_file import load_study_file

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run.yaml"
    run.write_text("steps: 4\nlr: 0.001\nsteps: 8\n")
    out = runner.invoke(app, ["train", "--config", str(run), "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "-q"])
    assert out.exit_code == 2
    assert out.output.strip().splitlines() == [
        f"error: {run}: key 'steps' appears twice in one mapping, at line 1 and line 3; each key may appear once"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]  # nothing written
    study = tmp_path / "study.yaml"
    study.write_text("name: s\nbase:\n  steps: 4\n  model:\n    name: micro-0.5m\n  steps: 6\nspace:\n"
                     "  eps_neg_up: [0.1, 0.2]\n")
    with pytest.raises(ConfigError) as e:
        load_study_file(study)
    assert e.value.lines == [f"{study}: key 'steps' appears twice in one mapping, at line 3 and line 6; "
                             "each key may appear once"]
    merged = tmp_path / "merge.yaml"  # a merge key's values may be overridden: that is no duplicate
    merged.write_text("a: &d {x: 1, y: 2}\nb:\n  <<: *d\n  x: 3\n")
    assert read_yaml(merged)["b"] == {"x": 3, "y": 2}


def test_an_unreachable_tracking_server_is_one_line_within_seconds_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{_closed_port()}"
    for argv in (["train", "--tracking-uri", uri, "--steps", "2", "-q"], ["runs", "clean", "--tracking-uri", uri]):
        t0 = time.monotonic()
        out = runner.invoke(app, argv)
        took = time.monotonic() - t0
        assert out.exit_code == 2, (argv, out.output)
        lines = out.output.strip().splitlines()
        assert len(lines) == 1 and f"no MLflow server answers at {uri}" in lines[0], out.output
        assert took < 15, took  # not MLflow's minutes of retries
    assert list(tmp_path.iterdir()) == []


def test_a_refused_resume_writes_nothing(tmp_path, monkeypatch):
    from workbench.tracking import RunTracker

    monkeypatch.chdir(tmp_path)
    missing = f"sqlite:///{tmp_path}/typo.db"  # no store there: the refusal must not create one
    out = runner.invoke(app, ["train", "--resume", "0123abcd", "--tracking-uri", missing, "-q"])
    assert out.exit_code == 2 and "no MLflow store at" in out.output, out.output
    assert list(tmp_path.iterdir()) == []

    store = tmp_path / "s"
    store.mkdir()
    uri = f"sqlite:///{store}/m.db"
    done = RunTracker(experiment="e", run_name="done", tracking_uri=uri)
    done.finish()
    (store / "m.db.lock").unlink()  # a store copied here, say: opening it to refuse must not add a file
    before = (store / "m.db").read_bytes()
    for run_id, why in ((done.run_id, "already FINISHED"), ("0123abcd", "no run '0123abcd'")):
        out = runner.invoke(app, ["train", "--resume", run_id, "--tracking-uri", uri, "-q"])
        assert out.exit_code == 2 and why in out.output, out.output
        assert sorted(p.name for p in store.iterdir()) == ["m.db"]
        assert (store / "m.db").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_resume_shows_no_download_bar_and_drops_the_reason_the_run_ended(tmp_path, monkeypatch, capfd):
    from workbench.config import dump_yaml
    from workbench.tracking import RunTracker
    from workbench.train.checkpoint import checkpoint_path
    from workbench.train.launch import resume_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    uri = f"sqlite:///{tmp_path}/m.db"
    run = RunTracker(experiment="e", run_name="failed once", tracking_uri=uri)
    run.log_text(dump_yaml(build_run_config(TINY)), "config.yaml")
    run.finish("FAILED", reason="disk full: [Errno 28] No space left on device")
    checkpoint_path(run.run_id).parent.mkdir(parents=True)
    checkpoint_path(run.run_id).write_bytes(b"state")  # resume_config checks it exists, not what it holds
    capfd.readouterr()
    cfg = resume_config(run.run_id, uri, {})
    assert cfg.steps == TINY["steps"]
    err = capfd.readouterr().err
    assert "Downloading" not in err and "%|" not in err, err
    assert TAG_FAILURE not in MlflowClient(uri).get_run(run.run_id).data.tags


def test_runs_clean_ends_the_study_and_trial_runs_of_a_killed_sweep_coordinator(tmp_path):
    from workbench.names import TAG_STATE

    uri = f"sqlite:///{tmp_path}/m.db"
    child = _python(f"""
        import os
        from workbench.tracking import lineage
        study = lineage.open_study_run(study_name="s", experiment="e", tags={{}}, tracking_uri={uri!r})
        trial = lineage.open_trial_run(parent_run_id=study, study_name="s", trial_number=0, params={{"x": 1}},
                                       tracking_uri={uri!r})
        print(study, trial, flush=True)
        os._exit(0)  # dies with both runs open, as a SIGKILLed coordinator would
        """, tmp_path, stdout=subprocess.PIPE, text=True)
    study, trial = child.communicate(timeout=120)[0].split()
    out = runner.invoke(app, ["runs", "clean", "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    assert "2 run(s) marked KILLED, 0 left RUNNING" in out.output
    c = MlflowClient(uri)
    for run_id in (study, trial):
        assert c.get_run(run_id).info.status == "KILLED"
        assert "is gone" in c.get_run(run_id).data.tags[TAG_FAILURE]
    assert c.get_run(trial).data.tags[TAG_STATE] == "FAIL"


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_queued_again(tmp_path, monkeypatch):
    import optuna
    from optuna.trial import TrialState

    from workbench.sweep.storage import fail_stale_trials, open_storage

    monkeypatch.setenv("DISPO_HEARTBEAT_S", "1")
    monkeypatch.setenv("DISPO_GRACE_S", "1")
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/o.db"), study_name="s")
    lost = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # RUNNING, no heartbeat thread started
    beating = study.ask()
    study._storage.record_heartbeat(beating._trial_id)
    fail_stale_trials(study, None)  # within the grace period: nothing is failed yet
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.RUNNING]
    time.sleep(1.5)
    study._storage.record_heartbeat(beating._trial_id)  # this one's worker lives on
    fail_stale_trials(study, None)
    ts = study.get_trials()
    assert [t.state for t in ts] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert ts[2].user_attrs["retry_of"] == lost.number and ts[2].system_attrs["fixed_params"] == lost.params
    fail_stale_trials(study, None)  # queued once, not once per check
    assert len(study.get_trials()) == 3


# --- a store already full when a run starts ---------------------------------------------------------------

_FULL_STORE = """
import json, os, sqlite3, subprocess, sys
mount, work = sys.argv[1:3]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mount], check=True)  # this namespace's alone
uri = f"sqlite:///{mount}/m.db"
from workbench.tracking import RunTracker
RunTracker(experiment="e", run_name="before", tracking_uri=uri).finish()
try:  # fill the disk the store is on
    with open(f"{mount}/filler", "wb") as f:
        while True:
            f.write(bytes(1 << 16))
            f.flush()
except OSError:
    pass
store = open(f"{mount}/m.db", "rb").read()
out = {}
for argv in (["train", "--steps", "2", "--experiment", "e", "-q"], ["sweep", sys.argv[3]]):
    try:  # a refusal takes seconds; a run that starts trains for minutes (its SFT warm start first)
        run = subprocess.run([sys.executable, "-m", "workbench.cli", *argv, "--tracking-uri", uri], cwd=work,
                             capture_output=True, text=True, timeout=180)
        out[argv[0]] = {"code": run.returncode, "stdout": run.stdout, "stderr": run.stderr}
    except subprocess.TimeoutExpired as e:
        out[argv[0]] = {"code": "still running after 180 s", "stdout": str(e.stdout), "stderr": str(e.stderr)}
out["runs"] = sqlite3.connect(f"file:{mount}/m.db?mode=ro", uri=True).execute(
    "select name, status from runs").fetchall()
out["unchanged"] = open(f"{mount}/m.db", "rb").read() == store
out["files"] = sorted(os.listdir(mount))
print(json.dumps(out))
"""


def _private_mounts() -> str | None:
    """Why a tmpfs cannot be mounted in a mount namespace of a test's own here, or None."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare --mount refused: {probe.stderr.strip()}"


@pytest.mark.skipif(_private_mounts() is not None, reason=f"no tmpfs of the test's own: {_private_mounts()}")
def test_a_store_already_full_when_a_run_starts_is_one_line_and_leaves_no_running_run(tmp_path):
    """The store's disk is a 4 MB tmpfs, full, in a mount namespace of the test's own (gone with it)."""
    mount, work = tmp_path / "full", tmp_path / "work"
    mount.mkdir()
    work.mkdir()
    study = work / "s.yaml"
    study.write_text("name: s\nbase:\n  steps: 2\n  model:\n    name: micro-0.5m\nsampler: grid\nspace:\n  eps_neg_up: [0.1]\n")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", _FULL_STORE,
                          str(mount), str(work), str(study)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for command in ("train", "sweep"):
        lines = got[command]["stderr"].strip().splitlines()
        assert got[command]["code"] == 2, got[command]
        assert len(lines) == 1 and re.fullmatch(
            rf"error: --tracking-uri: the disk holding {re.escape(str(mount))}/m.db is full \(\d+ KiB free, a run "
            r"needs 1024 KiB to start\); free space there or give a store on another disk", lines[0]), got[command]
    assert got["runs"] == [["before", "FINISHED"]]  # no run opened, none left RUNNING
    assert got["unchanged"] and got["files"] == ["filler", "m.db", "m.db.lock"]
    assert sorted(p.name for p in work.iterdir()) == ["s.yaml"]  # nothing written where the commands ran


# --- what counts as an outage of the tracking server --------------------------------------------------------


def test_only_a_lost_server_is_an_outage_and_a_long_one_is_one_line_after_the_patience(monkeypatch, capsys):
    import requests
    from mlflow.exceptions import MlflowException, RestException

    from workbench.tracking import outage

    def wrapped(inner: BaseException) -> MlflowException:  # how MLflow's http_request reports a failure
        try:
            raise inner
        except BaseException as e:
            try:
                raise MlflowException(f"API request to http://h/api failed with exception {e}")
            except MlflowException as outer:
                return outer

    assert outage.is_outage(wrapped(requests.exceptions.ConnectionError("[Errno 111] Connection refused")))
    assert outage.is_outage(wrapped(requests.exceptions.RetryError("too many 503 error responses")))
    assert outage.is_outage(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}))
    assert not outage.is_outage(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}))
    assert not outage.is_outage(RestException({"error_code": "UNAUTHENTICATED", "message": "login"}))
    # MLflow's own client failing (its telemetry thread racing a request) is a bug, not a lost server
    assert not outage.is_outage(wrapped(KeyError("_MLFLOW_TELEMETRY_SESSION_ID")))

    calls = []

    def refused():
        calls.append(time.monotonic())
        raise wrapped(requests.exceptions.ConnectionError("[Errno 111] Connection refused"))

    monkeypatch.setenv("DISPO_OUTAGE_S", "2")
    t0 = time.monotonic()
    with pytest.raises(outage.TrackingUnavailable) as e:
        outage.wait_out(refused, "log_batch", "http://127.0.0.1:9")
    assert 1.0 < time.monotonic() - t0 < 4 and len(calls) >= 3  # retried with backoff, given up on time
    assert str(e.value) == ("the MLflow server http://127.0.0.1:9 was unreachable for 2 s during log_batch "
                            "(connection refused); this process stops; run the same command again when the server "
                            "is back (dispo-wb services status), or raise DISPO_OUTAGE_S")
    assert capsys.readouterr().err.count("warning: the MLflow server http://127.0.0.1:9 does not answer") == 1
    with pytest.raises(RestException):  # not an outage: at once
        outage.wait_out(lambda: (_ for _ in ()).throw(RestException({"error_code": "BAD_REQUEST"})), "x", "u")


def test_the_workbench_turns_mlflows_own_retries_and_telemetry_off_unless_the_user_set_them(tmp_path):
    code = ("import os\nfrom workbench.tracking import resolve_tracking_uri\nresolve_tracking_uri('http://h:1')\n"
            "print([os.environ.get(k) for k in ('MLFLOW_DISABLE_TELEMETRY', 'MLFLOW_HTTP_REQUEST_MAX_RETRIES', "
            "'MLFLOW_HTTP_REQUEST_TIMEOUT')])")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DISPO_"))}
    base["PYTHONPATH"] = str(ROOT)
    run = lambda **env: subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,  # noqa: E731
                                       env={**base, **env}).stdout.strip()
    assert run() == "['true', '1', '60']"
    assert run(DISPO_OUTAGE_S="10") == "['true', '1', '30']" and run(DISPO_OUTAGE_S="600") == "['true', '1', '120']"
    assert run(MLFLOW_DISABLE_TELEMETRY="false", MLFLOW_HTTP_REQUEST_MAX_RETRIES="3") == "['false', '3', '60']"
