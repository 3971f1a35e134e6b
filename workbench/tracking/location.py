"""Where the MLflow store lives, checked before anything is written, and its first use serialised.

No mlflow import: the CLI refuses a store it cannot write (a folder that is a file, a folder it may
not write) before a run is opened, and `tracking.store` holds `first_use_lock` while MLflow opens a
SQLite store, because MLflow creates a new store's schema with migrations that two processes
must not run at once (`duplicate column name`).
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from workbench.config import DEFAULT_TRACKING_URI
from workbench.errors import UserError
from workbench.tracking.outage import bound_mlflow_retries, is_server, mark_reached, wait_out, was_reached

_SQLITE = "sqlite:///"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Explicit URI, else MLFLOW_TRACKING_URI, else a SQLite store in the working directory.

    A password in the URI moves into MLflow's environment variables (workbench.services.credentials);
    for a server, a stack's login file (DISPO_MLFLOW_AUTH) fills them when they are unset.
    """
    from workbench.services.credentials import login_from_file, take_password

    resolved = take_password(uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)
    if is_server(resolved):
        login_from_file()
        bound_mlflow_retries()
    return resolved


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` URI (absolute with four slashes); None for other stores."""
    if not uri.startswith(_SQLITE):
        return None
    return Path(uri[len(_SQLITE):].split("?", 1)[0])


PROBE_S = 5.0  # how long a tracking server may take to answer /health before it counts as unreachable


class _NoAnswer(UserError):
    """No MLflow server answered the probe."""


def probe_server(uri: str, flag: str = "--tracking-uri") -> None:
    """A UserError within seconds when no MLflow server answers at `uri` (http/https; others: no-op).

    MLflow's own client retries an unreachable server for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    backoff) before it says so; one GET of the server's unauthenticated /health answers at once.
    A server this process (or the one that started it: a sweep's workers and trainers) reached
    before is down for now, not mistyped: then the probe waits it out (workbench.tracking.outage).
    """
    if not is_server(uri):
        return
    if was_reached(uri):
        wait_out(lambda: _probe_once(uri, flag), "reaching the server", uri,
                 outage=lambda e: isinstance(e, _NoAnswer))
    else:
        _probe_once(uri, flag)
    mark_reached(uri)


def _probe_once(uri: str, flag: str) -> None:
    import urllib.error
    import urllib.request

    from workbench.services.credentials import redact

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_S):
            return
    except urllib.error.HTTPError as e:
        if e.code < 500:  # it answered: a server is there (a proxy may guard /health)
            return
        why = f"HTTP {e.code}"
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        why = getattr(reason, "strerror", None) or str(reason) or type(e).__name__
    raise _NoAnswer(f"{flag}: no MLflow server answers at {redact(uri)} ({why}); start it "
                    "(dispo-wb services up) or give the right address")


def check_writable_store(uri: str | None, flag: str = "--tracking-uri") -> str:
    """The resolved URI, or a UserError naming what is wrong; checked before a run is opened.

    A SQLite store must be a writable file, or one that can be created in an existing, writable
    folder (MLflow creates the file, not its folder). A server must answer (`probe_server`).
    """
    resolved = resolve_tracking_uri(uri)
    path = sqlite_path(resolved)
    if path is None:
        probe_server(resolved, flag)
        return resolved
    if path.exists():
        if not path.is_file():
            raise UserError(f"{flag}: {path} is not a file; a SQLite store is a file (sqlite:///PATH/mlflow.db)")
        if not os.access(path, os.R_OK | os.W_OK):
            raise UserError(f"{flag}: {path} is not writable; give a store file this user can write")
        _check_room(path, flag)
        return resolved
    folder = path.parent
    if not folder.exists():
        blocker = next((p for p in folder.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise UserError(f"{flag}: {blocker} is a file, not a folder, so {path} cannot be created; "
                            "give a path in an existing folder")
        raise UserError(f"{flag}: folder {folder} does not exist; create it or give a path in an existing folder")
    if not folder.is_dir():
        raise UserError(f"{flag}: {folder} is a file, not a folder, so {path} cannot be created; "
                        "give a path in an existing folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: folder {folder} is not writable; give a store in a folder this user can write")
    _check_room(path, flag)
    return resolved


MIN_FREE_BYTES = 1 << 20  # opening a run writes its experiment, run, tags, ~150 params and SQLite's journal


def _check_room(path: Path, flag: str) -> None:
    """A UserError when the disk holding the SQLite store `path` is already (nearly) full.

    Then MLflow's first write fails inside the store, which logs its own traceback, and a run
    can be left RUNNING when its row fits but its params do not; refusing first writes nothing.
    A disk that fills during a run ends the run FAILED (workbench.train.trainer).
    """
    import shutil

    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if free < MIN_FREE_BYTES:
        raise UserError(f"{flag}: the disk holding {path} is full ({free // 1024} KiB free, a run needs "
                        f"{MIN_FREE_BYTES // 1024} KiB to start); free space there or give a store on another disk")


@contextmanager
def first_use_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on `<db>.lock` while a SQLite store is opened (and, if new, created).

    Held for the store's opening only: MLflow's schema check and migrations run then. Other
    stores (servers, file stores) need none: a no-op. A folder that does not exist yet gets
    no lock either; opening the store then fails with MLflow's own message. Nor does a store
    that exists without a lock file: whoever creates a store here makes the lock file first, so
    none is being created, and only reading it (a refused --resume) must leave no file behind.
    """
    path = sqlite_path(uri)
    if path is None or not path.parent.is_dir() or path.name == ":memory:":
        yield
        return
    if path.exists() and not Path(f"{path}.lock").exists():
        yield
        return
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
