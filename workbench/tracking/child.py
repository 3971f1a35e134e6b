"""A run written by a child process, so that the training process never imports MLflow.

Importing MLflow and opening a SQLite store (SQLAlchemy, Alembic, pandas) adds ~140 MB to a
process, ~20% of a micro run's peak RSS, for a few milliseconds of work per step.
`ChildTracker` has `RunTracker`'s surface; each call is sent to a child process (a fresh
interpreter that imports the tracking package and MLflow, no torch) that holds the `RunTracker`, and
waits for its answer, so a call returns, or raises the child's exception, exactly when it would
have in process (the same order of writes, the same errors: a store that cannot be reached is
still the same one-line `UserError` at the start of a run). The run's writer tags
(`liveness.writer_tags`) name the training process, not the child: `dispo-wb runs clean` judges
the process whose death ends the run, and the child exits when its parent's end of the pipe
closes (the parent ended or was killed).

The memory is moved, not saved: the child's own peak (~150 MB) is not in the training process's
figure; `benchmarks/vs_trl.py` prints both.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from workbench.names import FINISHED


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ChildTracker:
    """`RunTracker(**kwargs)` in a child process; the same methods, each a synchronous call."""

    def __init__(self, **kwargs: Any):
        from workbench.tracking.liveness import writer_tags

        down_r, down_w = os.pipe()  # parent -> child
        up_r, up_w = os.pipe()  # child -> parent
        serve = f"from workbench.tracking.child import _serve; _serve({down_r}, {up_w})"
        self._proc = subprocess.Popen([sys.executable, "-c", serve],
                                      pass_fds=(down_r, up_w), stdin=subprocess.DEVNULL,
                                      env={**os.environ, "PYTHONPATH": _pythonpath()})
        os.close(down_r)
        os.close(up_w)
        self._to, self._from = Connection(down_w, readable=False), Connection(up_r, writable=False)
        self.child_peak_rss_mb: float | None = None
        try:
            self.run_id = self._call("open", kwargs, writer_tags())
        except BaseException:
            self.close()
            raise

    def _call(self, method: str, *args: Any) -> Any:
        try:
            self._to.send((method, args))
            ok, value = self._from.recv()
        except (EOFError, OSError, BrokenPipeError) as e:
            raise RuntimeError(f"the MLflow writer process ended unexpectedly (exit code {self._proc.poll()})") from e
        if not ok:
            raise value
        return value

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._call("log_metrics", {k: float(v) for k, v in metrics.items()}, step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._call("set_tags", tags)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log_text", text, artifact_file)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        self._call("log_table", rows, artifact_file)

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_file", str(path), artifact_path)

    def finish(self, status: str = FINISHED, reason: str | None = None) -> None:
        """End the run, then the child (its peak RSS is kept in `child_peak_rss_mb`), even when ending failed."""
        try:
            self._call("finish", status, reason)
        finally:
            self.close()

    def close(self) -> None:
        if self._proc.poll() is None and not self._to.closed:
            try:
                self.child_peak_rss_mb = self._call("peak_rss_mb")
                self._to.send(None)
            except (RuntimeError, OSError):
                pass
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for conn in (self._to, self._from):
            conn.close()

    def __del__(self):  # a tracker dropped without finish (an exception on the way) still ends its child
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            try:
                self._to.close()
                proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


def _pythonpath() -> str:
    """The child imports this very package, wherever the parent found it."""
    root = str(Path(__file__).resolve().parents[2])
    rest = os.environ.get("PYTHONPATH", "")
    return root + (os.pathsep + rest if rest else "")


def _serve(read_fd: int, write_fd: int) -> None:
    import signal

    from workbench.tracking.runs import RunTracker

    # Ctrl-C and SIGTERM reach the whole process group: the trainer handles them (finish the step,
    # end the run KILLED) and still needs its writer for that. The child ends when the parent says
    # so or its pipe closes.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)

    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    tracker = None
    while True:
        try:
            msg = inbox.recv()
        except EOFError:  # the parent is gone: leave the run as it is (RUNNING; its writer tags say who died)
            return
        if msg is None:
            return
        method, args = msg
        try:
            if method == "open":
                kwargs, writer = args
                tracker = RunTracker(**kwargs, writer=writer)  # the run names the training process as its writer
                value = tracker.run_id
            elif method == "peak_rss_mb":
                value = _peak_rss_mb()
            else:
                value = getattr(tracker, method)(*args)
            outbox.send((True, value))
        except BaseException as e:  # noqa: BLE001 - every error goes back to the caller
            try:
                pickle.dumps(e)
            except Exception:  # noqa: BLE001 - an exception that does not pickle comes back as its text
                e = RuntimeError(f"{type(e).__name__}: {e}")
            outbox.send((False, e))
