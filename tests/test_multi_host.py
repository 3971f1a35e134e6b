"""Hosts on a real network: the stack on a bridge address, each worker in its own network namespace.

The test makes its network: a bridge in this namespace holding 10.77.N.1/24 (N drawn per run, a
subnet nowhere else on the machine), and per worker a namespace joined to the bridge by a veth
pair, with 10.77.N.(2+i)/24 inside. The services listen on 10.77.N.1 only, so a worker reaches them
the way a second machine would: over an interface, through pg_hba.conf's subnet line and the
MLflow server's login. No traffic leaves loopback and the namespaces the test made.

Where the kernel refuses namespaces (no root, a container without CAP_NET_ADMIN) the tests skip
with one line, except under CI=true, where that is a failure. Namespaces, links and the stack are
removed by the fixture's finaliser, by an atexit hook and on SIGTERM / SIGINT, and, when the test
run is killed with SIGKILL, by a reaper process waiting for it (tests/stack_reaper.py); a later
run still removes anything left (names carry the owning pid).
"""

from __future__ import annotations

import atexit
import json
import os
import random
import re
import shutil
import signal
import stat
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
from workbench import names
from workbench.services import credentials
from workbench.services import stack as services

PREFIX = "dwb"  # names: dwb<pid>b (bridge), dwb<pid>n<i> (namespace), dwb<pid>v<i> / dwb<pid>p<i> (veth ends)
FAKE_CLI = [sys.executable, "-m", "tests.fake_cli"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _owner_alive(name: str) -> bool:
    """Whether the test run that made `name` (pid after the prefix) still lives; True for other names."""
    found = re.match(rf"{PREFIX}(\d+)", name)
    if not found:
        return True
    try:
        os.kill(int(found.group(1)), 0)
    except ProcessLookupError:
        return False
    return True


def _remove_leftovers() -> None:
    """Namespaces and links a SIGKILLed run of this test left (their owner pid is gone)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX) and not _owner_alive(name):
            _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(PREFIX) and not _owner_alive(name):
            _ip("link", "del", name, check=False)


class Network:
    """A bridge at 10.77.N.1/24 and `hosts` namespaces at 10.77.N.2, .3, ...; `close()` undoes all."""

    def __init__(self, hosts: int):
        pid = os.getpid()
        self.bridge = f"{PREFIX}{pid}b"
        self.namespaces = [f"{PREFIX}{pid}n{i}" for i in range(hosts)]
        used = _ip("-4", "-o", "addr", "show", check=False).stdout
        third = next(n for n in random.sample(range(1, 255), 254) if f"10.77.{n}." not in used)
        self.subnet = f"10.77.{third}.0/24"
        self.server = f"10.77.{third}.1"
        self.addresses = [f"10.77.{third}.{2 + i}" for i in range(hosts)]
        self.closed = False

    def open(self) -> "Network":
        _ip("link", "add", "name", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.server}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, (ns, addr) in enumerate(zip(self.namespaces, self.addresses)):
            outer, inner = f"{PREFIX}{os.getpid()}v{i}", f"{PREFIX}{os.getpid()}p{i}"
            _ip("netns", "add", ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        return self

    def run_in(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[i]]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for ns in self.namespaces:  # a namespace takes its veth end with it; the peer goes too
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", self.bridge, check=False)


def _why_no_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    probe = f"{PREFIX}{os.getpid()}probe"
    out = _ip("netns", "add", probe, check=False)
    if out.returncode != 0:
        return f"the kernel refused a network namespace: {out.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    out = _ip("link", "add", "name", probe[:15], "type", "bridge", check=False)
    if out.returncode != 0:
        return f"the kernel refused a bridge: {out.stderr.strip()}"
    _ip("link", "del", probe[:15], check=False)
    return None


_why = ss.missing() or _why_no_namespaces()
if _why and os.environ.get("CI") == "true":
    raise RuntimeError(f"CI must run the multi-host tests: {_why}")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why is not None, reason=f"no second host here: {_why}")]


@pytest.fixture(scope="module")
def lan():
    """The network and a stack on its bridge address; torn down however the module ends."""
    _remove_leftovers()
    net = Network(hosts=2)
    tmp = Path(tempfile.mkdtemp(prefix="dispo-lan-"))
    os.chmod(tmp, 0o755)  # PostgreSQL runs as `postgres` under root and must reach its folder
    folder = tmp / "stack"

    def teardown(*_):
        try:
            if (folder / "services.env").is_file():
                services.down(folder)
        finally:
            net.close()
            shutil.rmtree(tmp, ignore_errors=True)

    def on_signal(signum, frame):
        teardown()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    atexit.register(teardown)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    # SIGKILL runs none of the above: a process of its own then stops the stack and removes the network.
    guard = ss.reaper(folder, tmp, netns=tuple(net.namespaces), links=(net.bridge,))
    try:
        net.open()
        try:
            stack = services.up(folder, host=net.server, pg_port=ss.free_port(), mlflow_port=ss.free_port(),
                                allow_subnet=net.subnet)
        except Exception as e:  # the server's log goes with the folder: say why here
            log = folder / "mlflow.log"
            pytest.fail(f"{e}\n{log.read_text(errors='replace')[-3000:] if log.exists() else ''}")
        yield net, stack
    finally:
        teardown()
        ss.end_reaper(guard)
        atexit.unregister(teardown)
        for s, h in previous.items():
            signal.signal(s, h)


GET_EXPERIMENTS = """
import base64, json, sys, urllib.request, urllib.error
url, user, password = sys.argv[1:4]
req = urllib.request.Request(url + "/api/2.0/mlflow/experiments/search?max_results=1")
if user:
    req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
if len(sys.argv) > 4:
    req.add_header("Host", sys.argv[4])
try:
    with urllib.request.urlopen(req, timeout=240) as r:  # a first request opens the store: slow under load
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
"""


def _status_from(net: Network, i: int, stack, user: str = "", password: str = "", host: str | None = None) -> int:
    """HTTP status of an experiments search sent from inside namespace `i`."""
    argv = [*net.run_in(i), sys.executable, "-c", GET_EXPERIMENTS, stack.tracking_uri, user, password,
            *([host] if host else [])]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    log = (stack.folder / "mlflow.log").read_text(errors="replace")[-3000:]
    assert out.returncode == 0, f"{out.stderr[-1000:]}\n--- mlflow.log:\n{log}"
    return int(out.stdout.strip())


def test_beyond_loopback_mlflow_asks_for_the_generated_login_and_postgres_admits_only_the_subnet(lan):
    import psycopg

    net, stack = lan
    login = credentials.read_mlflow_auth(stack.auth_file)
    assert stat.S_IMODE(stack.auth_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(stack.pgpass.stat().st_mode) == 0o600
    assert _status_from(net, 0, stack) == 401
    assert _status_from(net, 0, stack, login["username"], "not-the-password") == 401
    assert _status_from(net, 1, stack, login["username"], login["password"]) == 200
    # A Host header the server was not started for is refused before any login is looked at.
    assert _status_from(net, 0, stack, login["username"], login["password"], host="evil.example") in (
        400, 403)
    hba = [line.split() for line in (stack.folder / "pg" / "pg_hba.conf").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    assert {row[3] for row in hba if row[0] == "host"} == {"127.0.0.1/32", "::1/128", net.subnet}
    with psycopg.connect(host=stack.host, port=stack.pg_port, user=services.ROLE, dbname="optuna",
                         password=ss.password(stack)) as conn, conn.cursor() as cur:
        cur.execute("show listen_addresses")
        assert cur.fetchone()[0] == net.server
        cur.execute("show max_connections")  # sized for services.WORKER_PROCESSES sweep processes
        assert int(cur.fetchone()[0]) == services.MAX_CONNECTIONS
    assert login["password"] not in (stack.folder / "services.env").read_text()
    assert login["password"] not in (stack.folder / "mlflow.log").read_text(errors="replace")


def _trials(stack, name: str) -> list[optuna.trial.FrozenTrial]:
    os.environ["PGPASSFILE"] = str(stack.pgpass.resolve())
    try:
        return optuna.load_study(study_name=name, storage=_observer(stack)).get_trials(deepcopy=False)
    except KeyError:
        return []


_STORAGES: dict[str, optuna.storages.RDBStorage] = {}


def _observer(stack) -> optuna.storages.RDBStorage:
    """One storage for all of the test's polling (a new one per poll holds a connection until GC)."""
    if stack.storage_url not in _STORAGES:
        _STORAGES[stack.storage_url] = optuna.storages.RDBStorage(stack.storage_url)
    return _STORAGES[stack.storage_url]


def test_two_workers_in_their_own_namespaces_sweep_over_the_wire_and_a_sigkilled_one_is_retried(lan, tmp_path):
    from mlflow import MlflowClient

    net, stack = lan
    login = credentials.read_mlflow_auth(stack.auth_file)
    secrets_ = {"postgres": ss.password(stack), "mlflow": login["password"]}
    name = f"lan-{uuid.uuid4().hex[:8]}"
    study = ss.write_study(tmp_path, name, {"eps_neg_up": [0.1, 0.2], "eps_pos_up": [0.2, 1.0]}, sleep=1.0)
    # Host 0 reads both secrets from the stack's 0600 files; host 1 gets them in its environment.
    envs = [{"PGPASSFILE": str(stack.pgpass.resolve()), credentials.AUTH_FILE_ENV: str(stack.auth_file.resolve())},
            {"PGPASSWORD": secrets_["postgres"], "MLFLOW_TRACKING_USERNAME": login["username"],
             "MLFLOW_TRACKING_PASSWORD": login["password"]}]
    workers = []
    for i, extra in enumerate(envs):
        home = tmp_path / f"host{i}"
        home.mkdir()
        workers.append(subprocess.Popen(
            [*net.run_in(i), *FAKE_CLI, "sweep", str(study), "--storage", stack.storage_url,
             "--tracking-uri", stack.tracking_uri, "--workers", "1"], cwd=home,
            stdout=open(home / "out.log", "w"), stderr=open(home / "err.log", "w"),
            env=ss.worker_env(DISPO_HEARTBEAT_S="1", DISPO_GRACE_S="4", **extra)))
    def logs() -> str:
        states = [(t.number, t.state.name, "mlflow_run_id" in t.user_attrs) for t in _trials(stack, name)]
        return f"trials {states}\n" + "\n".join(
            f"--- host{i} {f}:\n" + (tmp_path / f"host{i}" / f).read_text()[-1500:]
            for i in range(2) for f in ("out.log", "err.log"))

    try:
        deadline = time.monotonic() + 300  # process start-up takes a minute on a busy machine
        while time.monotonic() < deadline:  # kill host 0 once both hosts are inside a trial run
            running = [t for t in _trials(stack, name) if t.state == TrialState.RUNNING]
            if sum("mlflow_run_id" in t.user_attrs for t in running) == 2:
                time.sleep(1.0)
                break
            assert all(w.poll() is None for w in workers), logs()
            time.sleep(0.3)
        else:
            pytest.fail(f"two trials never ran at once; {logs()}")
        workers[0].send_signal(signal.SIGKILL)
        workers[1].wait(timeout=300)
        assert workers[1].returncode == 0, logs()
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
            w.wait()

    ts = _trials(stack, name)
    complete = [t for t in ts if t.state == TrialState.COMPLETE]
    failed = [t for t in ts if t.state == TrialState.FAIL]
    assert len(complete) == 4 and len({tuple(sorted(t.params.items())) for t in complete}) == 4  # none lost or twice
    assert len(failed) == 1 and len(ts) == 5
    retry = [t for t in complete if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retry) == 1 and retry[0].params == failed[0].params

    os.environ.update({"MLFLOW_TRACKING_USERNAME": login["username"], "MLFLOW_TRACKING_PASSWORD": login["password"]})
    try:
        client = MlflowClient(stack.tracking_uri)
        exp = client.get_experiment_by_name(f"exp-{name}")
        runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id], f"tags.`{names.TAG_KIND}` != 'study'")}
    finally:
        for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(k)
    assert {t.user_attrs["mlflow_run_id"] for t in ts} <= set(runs)
    assert runs[failed[0].user_attrs["mlflow_run_id"]].info.status == "KILLED"
    assert runs[retry[0].user_attrs["mlflow_run_id"]].info.status == "FINISHED"

    # The report, from this host, with the login read from the stack's file: then no secret anywhere.
    out = subprocess.run([*ss.dispo_wb(), "report", name, "--tracking-uri", stack.tracking_uri, "--no-png",
                          "--out-dir", str(tmp_path / "reports")], cwd=tmp_path, capture_output=True, text=True,
                         env=ss.worker_env(PGPASSFILE=str(stack.pgpass.resolve()),
                                           **{credentials.AUTH_FILE_ENV: str(stack.auth_file.resolve())}))
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "reports" / name / "index.html").is_file()
    dump = ss.dump_databases(stack)  # every MLflow param, tag, metric and Optuna attribute
    for what, secret in secrets_.items():
        assert secret not in out.stdout + out.stderr, what
        assert ss.grep_tree(tmp_path, secret) == [], what  # worker logs, working folders, the report
        assert ss.grep_tree(stack.folder / "artifacts", secret) == [], what
        assert secret not in dump, what
        assert secret not in (stack.folder / "mlflow.log").read_text(errors="replace"), what
