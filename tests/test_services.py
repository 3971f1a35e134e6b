"""Sweeps, reports and secrets against a real PostgreSQL and a real `mlflow server` (nothing mocked).

Run: .venv/bin/python -m pytest tests/test_services.py -q
The stack comes from DISPO_SERVICES_DIR (CI starts one) or is started here in a temporary
folder when PostgreSQL's programs are installed; without them the tests skip, except under
CI=true, where a missing stack is a failure. Training is the fake trainer (tests/fake_trainer.py);
what costs time is process start-up and the heartbeat grace period.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests import services_stack as ss
from workbench import tracking
from workbench.services import stack as services
from workbench.tracking import histories
from workbench.tracking.queries import run_record
from workbench.services.credentials import redact, take_password

_why = ss.missing()
if _why and os.environ.get("CI") == "true":
    raise RuntimeError(f"CI must run the service tests: {_why}")
pytestmark = pytest.mark.skipif(_why is not None, reason=f"no PostgreSQL here: {_why}")

FAKE_CLI = [sys.executable, "-m", "tests.fake_cli"]  # dispo-wb whose sweeps train on tests/fake_trainer.py


@pytest.fixture(scope="module")
def stack():
    with ss.running_stack() as s:
        yield s
    for storage in _OBSERVERS.values():
        storage.engine.dispose()


# One storage per URL for the test's own polling: a new RDBStorage per poll keeps a pooled
# connection open until garbage collection, and a slow worker start-up (a busy CI machine) made
# the polling loop alone exhaust PostgreSQL's 100 connections.
_OBSERVERS: dict[str, optuna.storages.RDBStorage] = {}


def observer(url: str) -> optuna.storages.RDBStorage:
    if url not in _OBSERVERS:
        _OBSERVERS[url] = optuna.storages.RDBStorage(url)
    return _OBSERVERS[url]


def start_worker(folder: Path, study: Path, storage: str, tracking_uri: str, **env: str) -> subprocess.Popen:
    """One 'host': its own working folder (SFT cache, logs), nothing shared but the two URLs."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([*FAKE_CLI, "sweep", str(study), "--storage", storage, "--tracking-uri", tracking_uri,
                             "--workers", "1"], cwd=folder,
                            stdout=open(folder / "out.log", "w"), stderr=open(folder / "err.log", "w"),
                            env=ss.worker_env(DISPO_HEARTBEAT_S="1", DISPO_GRACE_S="4", **env))


def trials(stack, name: str) -> list[optuna.trial.FrozenTrial]:
    os.environ["PGPASSFILE"] = str(stack.pgpass.resolve())
    return optuna.load_study(study_name=name, storage=observer(stack.storage_url)).get_trials(deepcopy=False)


def test_stack_listens_on_loopback_and_keeps_its_password_in_a_private_file(stack):
    import psycopg

    assert stat.S_IMODE(stack.pgpass.stat().st_mode) == 0o600
    assert stack.host == "127.0.0.1" and ":" not in stack.storage_url.split("@")[0].removeprefix("postgresql://")
    with psycopg.connect(host=stack.host, port=stack.pg_port, user=services.ROLE, dbname="optuna",
                          password=ss.password(stack)) as conn, conn.cursor() as cur:
        cur.execute("show listen_addresses")
        assert cur.fetchone()[0] == "127.0.0.1"
        cur.execute("select rolpassword like 'SCRAM-SHA-256%%' from pg_authid where rolname = %s", (services.ROLE,))
        assert cur.fetchone()[0]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=stack.host, port=stack.pg_port, user=services.ROLE, dbname="optuna", password="nope")
    assert services.status(stack.folder) == {"postgresql": True, "mlflow": True}


def test_three_hosts_share_only_the_urls_and_a_sigkilled_worker_is_retried_without_leaking_the_password(
        stack, tmp_path):
    """Bar of issue 12 at test size: 3 workers, 6 trials, one SIGKILL mid-trial, password in the URL."""
    space = {"eps_neg_up": [0.1, 0.2, 0.4], "eps_pos_up": [0.2, 1.0]}
    name = f"hosts-{uuid.uuid4().hex[:8]}"  # a CI stack outlives a test run: fresh names
    study = ss.write_study(tmp_path, name, space, sleep=0.4)
    url, secret = ss.storage_with_password(stack), ss.password(stack)
    workers = [start_worker(tmp_path / f"host{i}", study, url, stack.tracking_uri) for i in range(3)]
    deadline = time.monotonic() + 300  # process start-up takes a minute on a busy machine
    while time.monotonic() < deadline:  # kill host 0 once every host is inside a trial
        running = [t for t in trials(stack, name) if t.state == TrialState.RUNNING] if _study_exists(stack, name) else []
        if sum("mlflow_run_id" in t.user_attrs for t in running) == 3:  # each host is inside a trial run
            time.sleep(1.0)
            break
        time.sleep(0.2)
    else:
        pytest.fail("three trials never ran at once")
    workers[0].send_signal(signal.SIGKILL)
    for w in workers[1:]:
        assert w.wait(timeout=400) == 0, (tmp_path / "host1" / "err.log").read_text()[-2000:]
    workers[0].wait()

    ts = trials(stack, name)
    complete = [t for t in ts if t.state == TrialState.COMPLETE]
    failed = [t for t in ts if t.state == TrialState.FAIL]
    assert len(complete) == 6
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 6  # no point twice
    assert len(failed) == 1 and not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retry = [t for t in complete if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retry) == 1 and retry[0].params == failed[0].params

    client = MlflowClient(stack.tracking_uri)
    exp = client.get_experiment_by_name(f"exp-{name}")
    parents = client.search_runs([exp.experiment_id], "tags.`dispo.kind` = 'study'")
    assert len(parents) == 1
    kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    by_id = {k.info.run_id: k for k in kids}
    assert len(kids) == 7 and {t.user_attrs["mlflow_run_id"] for t in ts} == set(by_id)
    assert by_id[failed[0].user_attrs["mlflow_run_id"]].info.status == "KILLED"
    again = by_id[retry[0].user_attrs["mlflow_run_id"]]
    assert again.info.status == "FINISHED"
    assert again.data.tags["dispo.retry_of"] == str(failed[0].number)
    assert again.data.tags["dispo.retry_of_run"] == failed[0].user_attrs["mlflow_run_id"]
    assert parents[0].data.tags["optuna.storage"] == stack.storage_url  # no password, still usable

    # A report of the study against the server, then: the password is nowhere.
    out = subprocess.run([*ss.dispo_wb(), "report", name, "--tracking-uri", stack.tracking_uri, "--no-png",
                          "--out-dir", str(tmp_path / "reports")], cwd=tmp_path, capture_output=True, text=True,
                         env=ss.worker_env(PGPASSWORD=secret))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "reports" / name / "index.html").is_file()
    assert secret not in out.stdout + out.stderr
    assert ss.grep_tree(tmp_path, secret) == []  # worker logs, reports, working folders
    assert ss.grep_tree(stack.folder / "artifacts", secret) == []
    assert secret not in ss.dump_databases(stack)  # every MLflow param, tag, metric and Optuna attribute
    assert secret not in (stack.folder / "mlflow.log").read_text(errors="replace")


def test_a_host_that_stops_early_leaves_the_shared_study_run_to_the_last_host(stack, tmp_path):
    """The study's MLflow run is not closed by a host that stops while another still runs a trial."""
    name = f"last-{uuid.uuid4().hex[:8]}"
    # ~11 s trials whose runs end only once the test writes <host>/release: each host is inside a
    # trial when host 0 is stopped, however slowly either starts under load (host 0 is never
    # released; host 1 once the check is done)
    study = ss.write_study(tmp_path, name, {"eps_neg_up": [0.1, 0.2], "eps_pos_up": [0.2, 1.0]}, sleep=1.0,
                           steps=10, hold="release")
    hosts = [start_worker(tmp_path / f"host{i}", study, stack.storage_url, stack.tracking_uri,
                          PGPASSWORD=ss.password(stack)) for i in range(2)]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # both hosts inside a trial
        assert all(h.poll() is None for h in hosts), [(tmp_path / f"host{i}" / "err.log").read_text()[-500:]
                                                      for i in range(2)]
        running = [t for t in trials(stack, name) if t.state == TrialState.RUNNING] if _study_exists(stack, name) else []
        if sum("mlflow_run_id" in t.user_attrs for t in running) == 2:
            break
        time.sleep(0.2)
    else:
        pytest.fail("two trials never ran at once")
    hosts[0].send_signal(signal.SIGINT)  # Ctrl-C on host 0 while host 1 is mid-trial
    hosts[0].wait(timeout=120)
    client = MlflowClient(stack.tracking_uri)
    exp = client.get_experiment_by_name(f"exp-{name}")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`dispo.kind` = 'study'")
    out0 = (tmp_path / "host0" / "out.log").read_text()
    assert hosts[1].poll() is None, (tmp_path / "host1" / "err.log").read_text()[-2000:]
    assert parent.info.status == "RUNNING", out0
    assert "other hosts still run trials of" in out0
    (tmp_path / "host1" / "release").touch()
    assert hosts[1].wait(timeout=300) == 0, (tmp_path / "host1" / "err.log").read_text()[-2000:]
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["dispo.complete"] == "true"


def _study_exists(stack, name: str) -> bool:
    os.environ["PGPASSFILE"] = str(stack.pgpass.resolve())
    return name in {s.study_name for s in optuna.get_all_study_summaries(observer(stack.storage_url))}


def test_a_wrong_password_in_the_url_is_one_line_without_the_password(stack, tmp_path):
    study = ss.write_study(tmp_path, f"badpw-{uuid.uuid4().hex[:8]}", {"eps_neg_up": [0.1]})
    bad = f"postgresql://{services.ROLE}:Wr0ngSecret42@{stack.host}:{stack.pg_port}/optuna"
    out = subprocess.run([*FAKE_CLI, "sweep", str(study), "--storage", bad, "--tracking-uri", stack.tracking_uri],
                         cwd=tmp_path, capture_output=True, text=True, env=ss.worker_env(),
                         timeout=400)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "password authentication failed" in lines[0], out.stderr
    assert f"postgresql://{services.ROLE}@{stack.host}" in lines[0]
    assert "Wr0ngSecret42" not in out.stdout + out.stderr


def test_passwords_leave_urls_for_the_environment(monkeypatch):
    for k in ("PGPASSWORD", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(k, "")  # recorded first, so the values set below are undone after the test
        monkeypatch.delenv(k)
    assert take_password("postgresql://u:p%40ss@h:5433/db") == "postgresql://u@h:5433/db"
    assert os.environ["PGPASSWORD"] == "p@ss"
    assert tracking.resolve_tracking_uri("http://ann:s3cret@127.0.0.1:5005") == "http://127.0.0.1:5005"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("ann", "s3cret")
    assert redact("mysql://u:pw@h/db and http://a:b@c") == "mysql://u:***@h/db and http://a:***@c"


def test_report_reads_whole_histories_from_the_server_in_one_request_per_metric(stack, monkeypatch):
    from mlflow.utils import rest_utils

    from tests.report_fixtures import FakeRun, experiment, log_run

    client = MlflowClient(stack.tracking_uri)
    exp = experiment(client, "exp-bulk")
    ids = [log_run(client, exp, FakeRun(f"bulk-{i}", steps=30, seed=i)) for i in range(3)]
    runs = [run_record(client.get_run(i)) for i in ids]
    calls = []
    real = rest_utils.http_request
    monkeypatch.setattr(rest_utils, "http_request", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    bulk = sorted(histories.server_metric_rows(client, runs))
    keys = {k for r in runs for k in r.metric_keys}
    assert len(calls) == len(keys) and len(keys) > 20
    monkeypatch.setattr(rest_utils, "http_request", real)
    assert bulk == sorted(histories.client_metric_rows(client, runs))  # the same points, every step
    tracking.load_histories(runs, stack.tracking_uri)
    assert len(runs[0].metrics["reward/mean"].steps) == 30


def test_the_storage_waits_out_a_short_outage_and_names_a_long_one_in_one_line(monkeypatch):
    """A PostgreSQL of its own (stopped and started here), so no other test sees the outage."""
    import threading

    from workbench import sweep
    from workbench.sweep.shared_db import StorageUnavailable

    with ss.running_stack(with_mlflow=False, use_ci=False) as pg:
        monkeypatch.setenv("PGPASSFILE", str(pg.pgpass.resolve()))
        monkeypatch.setenv("DISPO_OUTAGE_S", "60")
        study = optuna.create_study(study_name="outage", storage=sweep.open_storage(pg.storage_url))
        services.pg_stop(pg)
        restart = threading.Timer(3.0, services.pg_start, args=(pg,))
        restart.start()
        t0 = time.monotonic()
        study.set_user_attr("written", "after the outage")
        restart.join()
        assert time.monotonic() - t0 >= 2.5
        fresh = optuna.load_study(study_name="outage", storage=pg.storage_url)
        assert fresh.user_attrs["written"] == "after the outage"

        monkeypatch.setenv("DISPO_OUTAGE_S", "3")
        services.pg_stop(pg)
        with pytest.raises(StorageUnavailable) as e:
            study.set_user_attr("never", 1)
        msg = str(e.value)
        assert "\n" not in msg and f"the Optuna storage {pg.storage_url} was unreachable for 3 s" in msg
        assert "connection" in msg.lower() and ss.password(pg) not in msg


def _stack_processes(folder: Path, session: int) -> list[str]:
    """Live processes of the stack in `folder`: its postgres processes (their data folder is under
    `folder` in the command line, or their parent is the postmaster) and the MLflow server's session."""
    postmaster = None
    pidfile = folder / "pg" / "postmaster.pid"
    if pidfile.exists():
        postmaster = int(pidfile.read_text().split()[0])
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, ppid, sid = fields[0], int(fields[1]), int(fields[4])
        if state in ("Z", "X"):
            continue
        if str(folder) in cmd or sid == session or int(proc.name) == postmaster or ppid == postmaster:
            found.append(f"{proc.name} {cmd[:150]}")
    return found


def test_a_test_run_killed_from_outside_leaves_no_stack_running(tmp_path):
    """A stand-in for a test run (a python that starts a stack the way the tests do) is SIGKILLed:
    no finaliser, atexit hook or signal handler runs, yet its PostgreSQL and MLflow server stop."""
    child = subprocess.Popen([sys.executable, "-c", "import time\nfrom tests import services_stack as ss\n"
                              "with ss.running_stack(use_ci=False) as s:\n"
                              "    print(s.folder, flush=True)\n    time.sleep(3600)\n"],
                             cwd=ss.REPO, stdout=subprocess.PIPE, text=True, env=ss.worker_env())
    folder = None
    try:
        folder = Path(child.stdout.readline().strip())  # once both services answer
        assert folder.name == "services", "the child did not start a stack"
        stack = services.Stack.load(folder)
        session = int((folder / "mlflow.pid").read_text())
        assert services.status(folder) == {"postgresql": True, "mlflow": True}
        assert len(_stack_processes(folder, session)) >= 3  # postmaster and its workers, the server
        child.kill()
        child.wait()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (_stack_processes(folder, session) or folder.parent.exists()):
            time.sleep(0.5)
        assert _stack_processes(folder, session) == []
        assert not folder.parent.exists()  # the stack's folder went too
        assert services.port_free(stack.host, stack.pg_port) and services.port_free(stack.host, stack.mlflow_port)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if folder is not None and (folder / "services.env").is_file():  # this test failed: leave nothing
            services.down(folder)
            shutil.rmtree(folder.parent, ignore_errors=True)
