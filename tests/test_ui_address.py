"""`dispo-wb ui` prints where the runs are: each experiment's runs table, not MLflow 3's GenAI overview.

Run: .venv/bin/python -m pytest tests/test_ui_address.py -q
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import mlflow
import pytest
import typer
from mlflow import MlflowClient
from typer.testing import CliRunner

from workbench.cli.app import app as dispo_wb
from workbench.tracking.experiments import RUNS_ROUTE, runs_table_url


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, dict[str, str]]:
    """A SQLite store with an empty experiment, and two experiments with one run each (the second newer)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('ui') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    ids = {name: client.create_experiment(name) for name in ("empty", "older", "newer")}
    for start_ms, name in ((1_000, "older"), (2_000, "newer")):
        run = client.create_run(ids[name], start_time=start_ms)
        client.set_terminated(run.info.run_id)
    return uri, ids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_prints_each_experiment_runs_table(store, monkeypatch):
    uri, ids = store
    served = []
    monkeypatch.setattr("workbench.report.page.serve_ui", lambda **kw: served.append(kw))
    app = dispo_wb
    port = _free_port()
    out = CliRunner().invoke(app, ["ui", "--tracking-uri", uri, "--port", str(port)])
    assert out.exit_code == 0, out.output
    lines = [line for line in out.output.splitlines() if line.startswith("runs of ")]
    assert lines == [f"runs of newer: http://127.0.0.1:{port}/#/experiments/{ids['newer']}/runs",
                     f"runs of older: http://127.0.0.1:{port}/#/experiments/{ids['older']}/runs"]
    assert served and served[0]["port"] == port  # then the UI itself is started on the same store
    assert "empty" not in out.output  # an experiment without runs is not worth a line


def test_ui_refuses_a_busy_port_in_one_line_before_printing(store, monkeypatch):
    uri, _ = store
    monkeypatch.setattr("workbench.report.page.serve_ui", lambda **kw: pytest.fail("must not start"))
    app = dispo_wb
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = CliRunner().invoke(app, ["ui", "--tracking-uri", uri, "--port", str(port)])
    assert out.exit_code == 2
    assert f"port {port} on 127.0.0.1 is in use" in out.output
    assert "runs of" not in out.output


def test_the_route_is_the_installed_mlflow_ui_runs_table():
    """The address is only useful if the installed UI's router has that route (MLflow renames routes)."""
    build = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    if not build.is_dir():
        pytest.skip("this MLflow install has no UI build")
    route = RUNS_ROUTE.removeprefix("/#").replace("{experiment_id}", ":experimentId")
    named = re.compile(r'experimentPageTabRuns\(\)\{return[^"]{0,40}"' + re.escape(route) + '"')
    assert any(named.search(p.read_text(encoding="utf-8", errors="replace")) for p in build.glob("*.js"))
    assert runs_table_url("http://h:5000/", "7") == "http://h:5000/#/experiments/7/runs"
