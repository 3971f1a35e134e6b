"""The real PostgreSQL + MLflow server stack that service tests and benchmarks run against.

CI (.ci/run) starts one with `dispo-wb services up` and exports DISPO_SERVICES_DIR; otherwise a
stack is started in a temporary folder on free ports when PostgreSQL's programs are installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from workbench.services import stack as services
from workbench.errors import UserError

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing() -> str | None:
    """Why no stack can be started here, or None."""
    if os.environ.get("DISPO_SERVICES_DIR"):
        return None
    try:
        for name in ("initdb", "pg_ctl", "psql"):
            services.pg_bin(name)
    except UserError as e:
        return str(e)
    return None


@contextmanager
def running_stack(with_mlflow: bool = True, use_ci: bool = True) -> Iterator[services.Stack]:
    """The CI stack (left running), or a fresh one in a temporary folder (stopped and removed afterwards).

    The folder is world-traversable: as root, PostgreSQL runs as `postgres`, which must reach it.
    """
    given = os.environ.get("DISPO_SERVICES_DIR")
    if given and use_ci:
        yield services.Stack.load(Path(given))
        return
    tmp = Path(tempfile.mkdtemp(prefix="dispo-stack-"))
    os.chmod(tmp, 0o755)
    guard = reaper(tmp / "services", tmp)
    try:
        stack = services.up(tmp / "services", pg_port=free_port(), mlflow_port=free_port(), with_mlflow=with_mlflow)
        yield stack
    finally:
        try:
            if (tmp / "services" / "services.env").is_file():
                services.down(tmp / "services")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            end_reaper(guard)


def reaper(folder: Path, tmp: Path | None = None, netns: tuple[str, ...] = (), links: tuple[str, ...] = ()
           ) -> subprocess.Popen:
    """A process that stops the stack in `folder` (removes `tmp`, namespaces, links) when this one dies.

    For a test run killed from outside (SIGKILL, SIGTERM): no finaliser runs then
    (tests/stack_reaper.py). Start it before the stack, end it with `end_reaper` after `down`.
    """
    argv = [sys.executable, "-m", "tests.stack_reaper", str(os.getpid()), str(folder)]
    argv += ["--rm", str(tmp)] if tmp else []
    argv += [a for ns in netns for a in ("--netns", ns)] + [a for link in links for a in ("--link", link)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # Its own session: a signal to the test's process group must not reach it. No inherited pipes:
    # it would hold a caller's `| tail` open until the test process dies.
    return subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def end_reaper(proc: subprocess.Popen) -> None:
    """The test cleaned up itself: the reaper has nothing left to do."""
    proc.kill()
    proc.wait()


def password(stack: services.Stack) -> str:
    return stack.pgpass.read_text().strip().rsplit(":", 1)[1]


def worker_env(**extra: str) -> dict[str, str]:
    """Environment of a sweep worker on another 'host': no password file, the repo importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSFILE", "PGPASSWORD", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def dispo_wb() -> list[str]:
    return [sys.executable, "-m", "workbench.cli"]


def dump_databases(stack: services.Stack) -> str:
    """Everything both databases hold, as SQL text (to grep for secrets)."""
    env = {**os.environ, "PGPASSFILE": str(stack.pgpass.resolve())}
    out = []
    for db in services.DATABASES:
        out.append(subprocess.run([services.pg_bin("pg_dump"), "-h", stack.host, "-p", str(stack.pg_port), "-U",
                                   services.ROLE, db], capture_output=True, text=True, env=env, check=True).stdout)
    return "\n".join(out)


def grep_tree(folder: Path, needle: str) -> list[Path]:
    """Files under `folder` that contain `needle`."""
    hits = []
    for p in folder.rglob("*"):
        if p.is_file():
            try:
                if needle.encode() in p.read_bytes():
                    hits.append(p)
            except OSError:
                pass
    return hits


def storage_with_password(stack: services.Stack) -> str:
    """The Optuna URL with the password written into it (what a careless user might pass)."""
    return f"postgresql://{services.ROLE}:{password(stack)}@{stack.host}:{stack.pg_port}/optuna"


def write_study(folder: Path, name: str, space: dict, sleep: float = 0.3, steps: int = 4, hold: str = "") -> Path:
    """A study of the fake trainer (tests/fake_trainer.py) sleeping `sleep` s a step; with `hold`, each run
    ends only once a file of that name exists in its host's working folder."""
    knobs = f"sleep={sleep}" + (f",hold={hold}" if hold else "")
    data = {"name": name, "base": {"experiment": f"exp-{name}", "steps": steps, "model": {"name": "micro-0.5m"},
                                   "eval": {"every": 2}, "run_name": f"fake:{knobs}"},
            "space": space, "sampler": "grid", "pruner": "none", "workers": 1}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
