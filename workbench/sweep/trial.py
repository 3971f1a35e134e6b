"""One training run in a child process, so that a crash, an OOM or a NaN ends one trial only.

`run_training(train_fn, config, on_eval=...)` forks the run from a forkserver that imported the
trainer once, passes eval metrics back over a pipe while the run goes (the sweep's pruner
answers whether to stop), and returns the trainer's RunResult. `train_fn` is a `TrainFn`
passed by reference (module level); `train_locally` is the local trainer without importing
torch here. Every child asks the kernel to kill it when its parent dies, so a `kill -9` of a
sweep leaves no orphans.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import select
import signal
import sys
import threading
import traceback
from typing import Any

from workbench.config import RunConfig
from workbench.train.results import OnEval, RunResult, TrainFn


class TrialCrashed(RuntimeError):
    """A training run of the trial failed (exception, non-zero exit, signal): FAIL that trial only."""


def train_locally(config: RunConfig, **kwargs: Any) -> RunResult:
    """The local trainer (`workbench.train.trainer.train`), imported by the training process only.

    A sweep's coordinator and workers pass this around without importing torch; the fork
    server imports `preload` once for all the runs it forks.
    """
    from workbench.train.trainer import train

    return train(config, **kwargs)


train_locally.preload = "workbench.train.trainer"  # type: ignore[attr-defined]


def run_training(train_fn: TrainFn, config: RunConfig, *, on_eval: OnEval | None = None,
                 **kwargs: Any) -> RunResult:
    """`train_fn(config, on_eval=..., **kwargs)` in a fresh process; its RunResult.

    Raises TrialCrashed when the process raises or dies (exit code or signal in the message).
    """
    ctx = _train_context(train_fn)
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_train_child, args=(there, train_fn, config, on_eval is not None, kwargs, os.getpid()),
                       name="sweep-train")
    proc.start()
    there.close()
    try:
        outcome = _serve(here, proc, on_eval)
    except KeyboardInterrupt:
        proc.join(timeout=30)  # the trainer got the Ctrl-C too: let it end its run KILLED
        raise
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        here.close()
    if outcome is None:
        raise TrialCrashed(f"training process died ({describe_exit(proc.exitcode)})")
    kind, payload = outcome
    if kind == "error":
        raise TrialCrashed(payload.strip().splitlines()[-1] if payload.strip() else "training raised")
    return payload


_PRELOADED: list[str] = []


def _train_context(train_fn: TrainFn):
    """Fork training processes from a server that has imported the trainer once (saves seconds a run).

    The server is a clean process (no threads, no open databases), so forking it is safe.
    """
    if not hasattr(os, "fork"):
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    if not _PRELOADED:
        _PRELOADED[:] = ["workbench.sweep.trial", "mlflow", getattr(train_fn, "preload", train_fn.__module__)]
        ctx.set_forkserver_preload(_PRELOADED)
    return ctx


def _serve(conn, proc, on_eval) -> tuple[str, Any] | None:
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return None
        if msg[0] == "eval":
            conn.send(bool(on_eval(msg[1], msg[2])) if on_eval else False)
        else:
            return msg[0], msg[1]


def _train_child(conn, train_fn: TrainFn, config: RunConfig, wants_eval: bool, kwargs: dict, parent_pid: int) -> None:
    die_with_parent(parent_pid)

    def on_eval(step: int, metrics: dict[str, float]) -> bool:
        conn.send(("eval", step, {k: float(v) for k, v in metrics.items()}))
        return bool(conn.recv())

    try:
        result = train_fn(config, on_eval=on_eval if wants_eval else None, **kwargs)
        if not isinstance(result, RunResult):
            raise TypeError(f"the train function returned a {type(result).__name__}, not a RunResult")
        conn.send(("result", result))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        sys.exit(1)


def die_with_parent(owner_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux; elsewhere a no-op).

    A forkserver child's parent is the server, which exits when no process holds the write
    end of its "alive" pipe any more. The server hands every child a copy of that end, so the
    child drops it here: otherwise a training child keeps its own server, and so itself,
    alive after `owner_pid` (the sweep) is killed, and goes on writing metrics until its next
    message to the dead sweep fails. `owner_pid` is checked once more in case it died before
    the prctl call.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    alive_fd = getattr(server, "_forkserver_alive_fd", None)
    if alive_fd is not None and getattr(server, "_forkserver_pid", None) is None:  # inherited, not our own server's
        os.close(alive_fd)
        server._forkserver_alive_fd = None
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    _exit_with(owner_pid)
    try:
        os.kill(owner_pid, 0)
    except ProcessLookupError:
        os._exit(1)


def _exit_with(owner_pid: int) -> None:
    """Exit the moment `owner_pid` dies, when it is not the parent (a forkserver child's case).

    The death signal above follows the fork server, which exits only after tearing its
    interpreter down (most of a second under load), time enough for a trainer to log another
    step. A pidfd becomes readable when its process exits; a daemon thread waits on it.
    """
    if owner_pid == os.getppid() or not hasattr(os, "pidfd_open"):
        return
    try:
        fd = os.pidfd_open(owner_pid)
    except OSError:  # already gone (checked by the caller) or pidfds unsupported
        return

    def watch() -> None:
        select.select([fd], [], [])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-owner", daemon=True).start()


def describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
