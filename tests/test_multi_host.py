"""Hosts on a real network: the stack on a bridge address, each worker in its own network namespace.

The test makes its network: a bridge in this namespace holding 10.77.N.1/24 (N drawn per run, a
subnet nowhere else on the machine), and per worker a namespace joined to the bridge by a veth
pair, with 10.77.N.(2+i)/24 inside. The services listen on 10.77.N.1 only, so a worker reaches them
the way a second machine would: over an interface, through pg_hba.conf's subnet line and the
MLflow server's login. No traffic leaves loopback and the namespaces the test made.

Where the kernel refuses namespaces (no root, a container without CAP_NET_ADMIN) the tests skip
with one line, except under CI=true, where that is a failure. Namespaces, links and the stack are
removed by the fixture's finaliser, by an atexit hook and on SIGTERM / SIGINT, and a later run
removes what a SIGKILLed one left (names carry the owning pid).
"""

from __future__ import annotations

import atexit
import json
import os
import random
import re
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
import yaml
from optuna.trial import TrialState

from tests import services_stack as ss
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

    def on_signal(signum, frame):
        teardown()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    atexit.register(teardown)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        net.open()
        stack = services.up(folder, host=net.server, pg_port=ss.free_port(), mlflow_port=ss.free_port(),
                            allow_subnet=net.subnet)
        yield net, stack
    finally:
        teardown()
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
    with urllib.request.urlopen(req, timeout=20) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
"""


def _status_from(net: Network, i: int, url: str, user: str = "", password: str = "", host: str | None = None) -> int:
    """HTTP status of an experiments search sent from inside namespace `i`."""
    argv = [*net.run_in(i), sys.executable, "-c", GET_EXPERIMENTS, url, user, password, *([host] if host else [])]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def test_beyond_loopback_mlflow_asks_for_the_generated_login_and_postgres_admits_only_the_subnet(lan):
    import psycopg

    net, stack = lan
    login = credentials.read_mlflow_auth(stack.auth_file)
    assert stat.S_IMODE(stack.auth_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(stack.pgpass.stat().st_mode) == 0o600
    assert _status_from(net, 0, stack.tracking_uri) == 401
    assert _status_from(net, 0, stack.tracking_uri, login["username"], "not-the-password") == 401
    assert _status_from(net, 1, stack.tracking_uri, login["username"], login["password"]) == 200
    # A Host header the server was not started for is refused before any login is looked at.
    assert _status_from(net, 0, stack.tracking_uri, login["username"], login["password"], host="evil.example") in (
        400, 403)
    hba = [line.split() for line in (stack.folder / "pg" / "pg_hba.conf").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    assert {row[3] for row in hba if row[0] == "host"} == {"127.0.0.1/32", "::1/128", net.subnet}
    with psycopg.connect(host=stack.host, port=stack.pg_port, user=services.ROLE, dbname="optuna",
                         password=ss.password(stack)) as conn, conn.cursor() as cur:
        cur.execute("show listen_addresses")
        assert cur.fetchone()[0] == net.server
    assert login["password"] not in (stack.folder / "services.env").read_text()
    assert login["password"] not in (stack.folder / "mlflow.log").read_text(errors="replace")
