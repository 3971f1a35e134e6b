"""What a study on a shared database needs beyond Optuna's RDBStorage: a lock and patience.

- `StudyLock`: a PostgreSQL advisory lock named after the study, held while a worker decides
  whether to start a trial and asks for it, and while a sweep opens its MLflow parent run or
  re-queues failed trials. Workers on other hosts share only the database, so this is the one
  place where "is there a trial left for me?" can be answered without a race. The lock belongs
  to a connection: a worker killed with SIGKILL drops it with the connection.
- `resilient(storage)`: every storage call is retried with exponential backoff while the
  database cannot be reached (connection refused, connection dropped), for `DISPO_OUTAGE_S`
  seconds (default 60). A short outage costs a pause, not a trial; a longer one raises
  `StorageUnavailable`, one line that names the (password-free) URL and what to do.
  Retrying a write whose commit reached the database before the connection broke is the one
  case this can repeat; Optuna's writes are state changes that then fail as "already finished",
  which the retry treats as done.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time
from typing import Any, Callable

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat

from workbench.services.credentials import redact
from workbench.errors import UserError, first_line
from workbench.tracking.outage import OUTAGE_ENV, mark_reached, outage_patience_s, was_reached

_FIRST_WAIT_S, _MAX_WAIT_S = 0.5, 8.0


class StorageUnavailable(UserError):
    """The shared database stayed out of reach longer than this worker waits."""


_OUTAGE_SINCE: dict[str, float] = {}  # per URL: when this process first saw the current outage

# libpq's words for a server that is not there (any more); a wrong password or database is not an outage.
_OUTAGE_WORDS = ("connection refused", "could not connect", "server closed the connection", "terminating connection",
                 "connection already closed", "the database system is", "timed out", "no route to host",
                 "could not receive data", "could not send data", "connection not open", "ssl syscall",
                 "connection is closed", "network is unreachable")


def _is_outage(exc: BaseException | None) -> bool:
    """A lost or refused connection somewhere in the exception chain (not a bad query or login)."""
    import sqlalchemy.exc as sa_exc

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)):
            return any(w in str(exc).lower() for w in _OUTAGE_WORDS)
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def open_rdb(factory: Callable[[], Any], url: str, what: str = "opening the storage") -> Any:
    """`factory()` (which connects), waiting out an outage; a refused login or missing database is one line."""
    import sqlalchemy.exc as sa_exc

    try:
        return with_backoff(factory, what, url)
    except sa_exc.SQLAlchemyError as e:
        raise UserError(f"cannot open the Optuna storage {redact(url)}: "
                        f"{redact(first_line(getattr(e, 'orig', None) or e))}") from None


def with_backoff(fn: Callable[[], Any], what: str, url: str, patience_s: float | None = None) -> Any:
    """`fn()`, retried with exponential backoff (and jitter) while the database is out of reach."""
    patience_s = outage_patience_s() if patience_s is None else patience_s
    deadline, wait, retried = time.monotonic() + patience_s, _FIRST_WAIT_S, False
    while True:
        try:
            value = fn()
        except optuna.exceptions.UpdateFinishedTrialError:
            if retried:  # the write landed before the connection broke
                _back(url)
                return None
            raise
        except Exception as e:  # noqa: BLE001 - only outages are retried, the rest re-raised
            if not _is_outage(e):
                raise
            if url not in _OUTAGE_SINCE and was_reached(url):  # said once per outage and process, at once
                _OUTAGE_SINCE[url] = time.monotonic()
                cause = e.__cause__ or e
                print(f"warning: the Optuna storage {redact(url)} does not answer during {what} "
                      f"({redact(first_line(getattr(cause, 'orig', None) or cause))}); waiting up to "
                      f"{patience_s:.0f} s ({OUTAGE_ENV}) [pid {os.getpid()}]", file=sys.stderr, flush=True)
            if time.monotonic() + wait > deadline:
                cause = e.__cause__ or e
                raise StorageUnavailable(
                    f"the Optuna storage {redact(url)} was unreachable for {patience_s:.0f} s during {what} "
                    f"({redact(first_line(getattr(cause, 'orig', None) or cause))}); this worker stops, its "
                    "running trial is re-queued by the heartbeat; run the same command again when the "
                    "database is back") from None
            time.sleep(wait * (0.5 + random.random()))
            wait, retried = min(wait * 2, _MAX_WAIT_S), True
            continue
        _back(url)
        return value


def _back(url: str) -> None:
    """After a call that got through: the storage counts as reached (a later miss is an outage, not a typo)."""
    mark_reached(url)
    began = _OUTAGE_SINCE.pop(url, None)
    if began is not None:
        print(f"the Optuna storage {redact(url)} answers again after {time.monotonic() - began:.0f} s "
              f"[pid {os.getpid()}]", file=sys.stderr, flush=True)


def _retrying(name: str) -> Callable:
    def method(self, *args, **kwargs):
        return with_backoff(lambda: getattr(self._inner, name)(*args, **kwargs), name, self._url)

    method.__name__ = name
    return method


def _public_methods() -> set[str]:
    names = set()
    for cls in (BaseStorage, BaseHeartbeat):
        names |= {n for n, v in vars(cls).items() if callable(v) and (not n.startswith("__"))}
    return names - {"get_heartbeat_stale_trial_callback", "get_heartbeat_interval"}


def _plain(name: str) -> Callable:
    def method(self, *args, **kwargs):
        return getattr(self._inner, name)(*args, **kwargs)

    method.__name__ = name
    return method


ResilientStorage = type("ResilientStorage", (BaseStorage, BaseHeartbeat), {
    "__doc__": "A storage whose every call waits out short database outages (see module doc).",
    "__init__": lambda self, inner, url: (setattr(self, "_inner", inner), setattr(self, "_url", url), None)[-1],
    **{n: _retrying(n) for n in _public_methods()},
    "get_heartbeat_stale_trial_callback": _plain("get_heartbeat_stale_trial_callback"),
    "get_heartbeat_interval": _plain("get_heartbeat_interval"),
})


def resilient(storage: BaseStorage, url: str) -> BaseStorage:
    """Wrap an RDB storage (through Optuna's own cache layer) so that outages are waited out."""
    return ResilientStorage(optuna.storages.get_storage(storage), url)


def is_shared(url: str) -> bool:
    """A database several hosts can reach (not a file of this machine)."""
    return "://" in url and not url.startswith("sqlite")


class StudyLock:
    """A session-level PostgreSQL advisory lock keyed by study name; a no-op on other storages.

    `acquire()` blocks until held; `release()` may be called more than once.
    """

    def __init__(self, url: str, study_name: str):
        self.url, self.held, self._conn = url, False, None
        digest = hashlib.sha256(f"dispo-wb/{study_name}".encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)
        self._engine = None
        if url.startswith(("postgresql", "postgres")):
            import sqlalchemy as sa
            from sqlalchemy.pool import NullPool

            self._engine = sa.create_engine(url, poolclass=NullPool)

    def acquire(self) -> None:
        if self._engine is None or self.held:
            return
        import sqlalchemy as sa

        def lock():
            conn = self._engine.connect()
            try:
                conn.execute(sa.text("select pg_advisory_lock(:k)"), {"k": self.key})
            except BaseException:
                conn.close()
                raise
            return conn

        self._conn = open_rdb(lock, self.url, "taking the study lock")
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        conn, self._conn = self._conn, None
        try:
            conn.close()  # a session lock ends with its session
        except Exception:  # noqa: BLE001 - a dead connection has released the lock already
            pass

    def __enter__(self) -> "StudyLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
