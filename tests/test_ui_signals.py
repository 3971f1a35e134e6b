"""`dispo-wb ui` stopped by SIGTERM or SIGINT stops the servers it started (their whole process groups).

Run: .venv/bin/python -m pytest tests/test_ui_signals.py -q
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.report_fixtures import build_store


def _group_members(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":  # field 5 of stat: the process group
                out.append(int(entry.name))
    return out


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("store"))


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads process groups from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_ui_stops_its_servers(store, sig):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen([sys.executable, "-m", "workbench.cli", "ui", "--port", str(port), "--tracking-uri",
                           store.uri], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    servers: list[int] = []
    try:
        lines = [ui.stdout.readline()]  # each experiment's runs table first, then the UI itself
        while lines[-1].startswith("runs of ") and len(lines) < 10:
            lines.append(ui.stdout.readline())
        assert len(lines) > 1 and "MLflow UI: http://127.0.0.1" in lines[-1], lines
        for _ in range(100):
            servers = _children(ui.pid)
            if servers:
                break
            time.sleep(0.05)
        assert servers, "dispo-wb ui started no server"
        time.sleep(1.0)  # let the server fork its own workers into its group
        ui.send_signal(sig)
        assert ui.wait(timeout=30) is not None
        deadline = time.time() + 15
        while time.time() < deadline and any(_group_members(p) for p in servers):
            time.sleep(0.2)
        assert not [m for p in servers for m in _group_members(p)], "a server outlived dispo-wb ui"
    finally:
        if ui.poll() is None:
            ui.kill()
        for p in servers:  # what a failing test would leave behind
            if _group_members(p):
                os.killpg(p, signal.SIGKILL)
