"""Passwords never travel inside URLs past the command line.

A URL given with a password (`postgresql://u:pw@host/db`, `http://u:pw@host:5000`) is split at
once: the password goes where the client library reads it from the environment (libpq's
`PGPASSWORD`; MLflow's `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`), and the rest of
the workbench, its MLflow tags, logs, errors and reports only ever see the URL without it. The
environment is inherited by worker and training processes, so they connect as well. Better
still, give no password in the URL at all: `PGPASSFILE` (what `dispo-wb services up` writes) or
the MLflow variables above.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit, urlunsplit

_USERINFO = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*):(?P<password>[^@\s]*)@", re.IGNORECASE)


def redact(text: str) -> str:
    """Any `scheme://user:password@` in `text` with the password replaced by `***`."""
    return _USERINFO.sub(r"\g<head>:***@", text)


def take_password(url: str) -> str:
    """`url` without its password; a PostgreSQL or HTTP password moves into the client's environment.

    Other schemes keep theirs (no standard variable to move it to); show them through `redact`.
    """
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    scheme = parts.scheme.split("+")[0]
    if scheme in ("postgresql", "postgres"):
        os.environ["PGPASSWORD"] = unquote(parts.password)
    elif scheme in ("http", "https"):
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    else:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    if parts.username:
        netloc = f"{parts.username}@{netloc}" if scheme != "http" and scheme != "https" else netloc
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
