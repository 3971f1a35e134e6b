"""Waiting out an MLflow server outage: a restart costs a pause, a long outage is one line on time.

MLflow's client retries an unreachable server with its own backoff (7 retries doubling from
2 s, about 4 minutes) and then raises a multi-line exception. For an `http(s)://` store the
workbench instead:
- cuts MLflow's own retries to one immediate retry (`MLFLOW_HTTP_REQUEST_MAX_RETRIES=1`) and
  bounds a request's wait for an answer (`MLFLOW_HTTP_REQUEST_TIMEOUT`: DISPO_OUTAGE_S within
  30-120 s), unless the user set them; a value set in the environment wins;
- retries every client call itself (`PatientClient`, what `store.open_client` returns) with
  exponential backoff (0.5 s doubling to 8 s) while the server refuses connections, drops them,
  times out or answers 429/5xx, for `DISPO_OUTAGE_S` seconds (default 60, the same patience the
  Optuna storage has: workbench.sweep.shared_db);
- says so on stderr when an outage begins (one line per process) and when the server is back;
- raises `TrackingUnavailable` (a UserError: one line, no traceback from the CLI) when the
  outage outlasts the patience.

A refused login, an unknown run or a bad request is not an outage: raised at once. Repeating a
write whose request reached the server before the connection broke is safe for metrics (the
server drops a point it already holds), tags, params and run ends; a run created twice is the
one case it can repeat (the first answer was lost), which needs the server killed mid-request.

No mlflow import at module level: the CLI loads this before it knows whether it needs MLflow.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from typing import Any, Callable

from workbench.errors import UserError, first_line

OUTAGE_ENV = "DISPO_OUTAGE_S"
REACHED_ENV = "DISPO_TRACKING_REACHED"  # servers this process tree has reached: later misses are outages
_FIRST_WAIT_S, _MAX_WAIT_S = 0.5, 8.0
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)


class TrackingUnavailable(UserError):
    """The MLflow server stayed out of reach longer than this process waits."""


def outage_patience_s() -> float:
    """How long a worker waits out an outage of the database or the MLflow server (DISPO_OUTAGE_S)."""
    return float(os.environ.get(OUTAGE_ENV, "60"))


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def bound_mlflow_retries() -> None:
    """MLflow's own HTTP retries down to one and its answer timeout bounded, so that our clock decides.

    The one retry is immediate (urllib3 waits only before a second): it quietly covers a pooled
    keep-alive connection the server closed just as a request went out ("connection reset", once
    in a 1,000-trial sweep), which is no outage.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(min(120, max(30, outage_patience_s())))))


def mark_reached(uri: str) -> None:
    """Remember (for this process and the ones it starts) that the server at `uri` answered once."""
    reached = os.environ.get(REACHED_ENV, "").split()
    if uri not in reached:
        os.environ[REACHED_ENV] = " ".join([*reached, uri])


def was_reached(uri: str) -> bool:
    return uri in os.environ.get(REACHED_ENV, "").split()


def is_outage(exc: BaseException | None) -> bool:
    """A refused, dropped or timed-out connection, or a 408/429/5xx answer of the server, anywhere in the chain."""
    import requests
    from mlflow.exceptions import RestException  # loaded already: an MLflow call raised

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                            requests.exceptions.RetryError)):
            return True
        # An error the server sent. MLflow also wraps errors of its own client as HTTP 500
        # ("API request ... failed with exception KeyError(...)"): those are not outages.
        if isinstance(exc, RestException) and exc.get_http_status_code() in _RETRY_STATUS:
            return True
        if isinstance(exc, requests.exceptions.HTTPError) and getattr(exc.response, "status_code", None) in \
                _RETRY_STATUS:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def why(exc: BaseException) -> str:
    """An outage's reason in a few words: connection refused, timed out, HTTP 503: <the server's words>."""
    status = ""
    seen = 0
    while exc is not None and seen < 10:
        low = str(exc).lower()
        for words in ("connection refused", "connection reset", "connection aborted", "remote end closed",
                      "timed out", "name or service not known", "no route to host", "network is unreachable"):
            if words in low:
                return words
        if "too many" in low and "error responses" in low:
            return low[low.index("too many"):].split(")")[0].split("'")[0]
        code = getattr(getattr(exc, "response", None), "status_code", None)
        if code is None and hasattr(exc, "get_http_status_code"):
            code = exc.get_http_status_code()
        if code and not status:
            status = f"HTTP {code}: {first_line(exc)[:160]}"
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return status or "no answer"


class _Outages:
    """Per process and server: when the current outage began, so that it is announced once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.since: dict[str, float] = {}

    def begin(self, uri: str, what: str, reason: str, patience_s: float) -> None:
        from workbench.services.credentials import redact

        with self.lock:
            if uri in self.since:
                return
            self.since[uri] = time.monotonic()
        print(f"warning: the MLflow server {redact(uri)} does not answer ({reason}) during {what}; waiting up to "
              f"{patience_s:.0f} s ({OUTAGE_ENV}) [pid {os.getpid()}]", file=sys.stderr, flush=True)

    def end(self, uri: str) -> None:
        from workbench.services.credentials import redact

        with self.lock:
            began = self.since.pop(uri, None)
        if began is not None:
            print(f"the MLflow server {redact(uri)} answers again after {time.monotonic() - began:.0f} s "
                  f"[pid {os.getpid()}]", file=sys.stderr, flush=True)


_OUTAGES = _Outages()


def wait_out(fn: Callable[[], Any], what: str, uri: str, patience_s: float | None = None,
             outage: Callable[[BaseException], bool] = is_outage) -> Any:
    """`fn()`, retried with exponential backoff (and jitter) while the server at `uri` is out of reach.

    Raises TrackingUnavailable, one line, when it is still out of reach after `patience_s`.
    """
    from workbench.services.credentials import redact

    patience_s = outage_patience_s() if patience_s is None else patience_s
    deadline, wait = time.monotonic() + patience_s, _FIRST_WAIT_S
    while True:
        try:
            value = fn()
        except Exception as e:  # noqa: BLE001 - only outages are retried, the rest re-raised
            if not outage(e):
                raise
            reason = why(e)
            _OUTAGES.begin(uri, what, reason, patience_s)
            if time.monotonic() + wait > deadline:
                raise TrackingUnavailable(
                    f"the MLflow server {redact(uri)} was unreachable for {patience_s:.0f} s during {what} "
                    f"({reason}); this process stops; run the same command again when the server is back "
                    f"(dispo-wb services status), or raise {OUTAGE_ENV}") from None
            time.sleep(wait * (0.5 + random.random()))
            wait = min(wait * 2, _MAX_WAIT_S)
            continue
        _OUTAGES.end(uri)
        return value


class PatientClient:
    """An MlflowClient whose public methods wait out an outage of its server (see module doc).

    Attributes that are not public methods (`_tracking_client`, ...) are the client's own.
    """

    def __init__(self, client: Any, uri: str):
        self._client, self._uri = client, uri

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._client, name)
        if name.startswith("_") or not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            return wait_out(lambda: value(*args, **kwargs), name, self._uri)

        call.__name__ = name
        call.__doc__ = value.__doc__
        return call
