"""Passwords never travel inside URLs past the command line.

A URL given with a password (`postgresql://u:pw@host/db`, `http://u:pw@host:5000`) is split at
once: the password goes where the client library reads it from the environment (libpq's
`PGPASSWORD`; MLflow's `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`), and the rest of
the workbench, its MLflow tags, logs, errors and reports only ever see the URL without it. The
environment is inherited by worker and training processes, so they connect as well. Better
still, give no password in the URL at all: `PGPASSFILE` (what `dispo-wb services up` writes) or
the MLflow variables above.

A stack served beyond loopback (`dispo-wb services up --host ADDRESS`) runs MLflow's basic-auth
app; its admin login lives in a 0600 file in the stack folder (`mlflow-auth.ini`, which is also
the server's MLFLOW_AUTH_CONFIG_PATH), named to clients by DISPO_MLFLOW_AUTH in `services.env`.
Clients given no MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD read the login from that
file into those variables (`login_from_file`), so it is never typed, printed or logged.
"""

from __future__ import annotations

import configparser
import os
import re
import secrets
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

AUTH_FILE_ENV = "DISPO_MLFLOW_AUTH"  # path of a stack's mlflow-auth.ini
_USER_ENV, _PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
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
        os.environ[_USER_ENV] = unquote(parts.username or "")
        os.environ[_PASSWORD_ENV] = unquote(parts.password)
    else:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    if parts.username:
        netloc = f"{parts.username}@{netloc}" if scheme != "http" and scheme != "https" else netloc
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def private_file(path: Path, text: str) -> None:
    """Write `text` to a new file that is mode 0600 from its first byte (no window where others may read it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_mlflow_auth(path: Path, database_uri: str, username: str) -> None:
    """The basic-auth app's config with a fresh admin password and CSRF key, in a new 0600 file.

    Users other than the admin get no permission by default: every worker logs in as the admin.
    """
    private_file(path, "[mlflow]\n"
                       "default_permission = NO_PERMISSIONS\n"
                       f"database_uri = {database_uri}\n"
                       f"admin_username = {username}\n"
                       f"admin_password = {secrets.token_urlsafe(24)}\n"
                       "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"

                       "[dispo]\n"
                       f"flask_secret_key = {secrets.token_urlsafe(32)}\n")


def read_mlflow_auth(path: Path) -> dict[str, str]:
    """`username`, `password` and `secret_key` from a stack's auth file."""
    config = configparser.ConfigParser(interpolation=None)
    if not config.read(path):
        from workbench.errors import UserError

        raise UserError(f"{AUTH_FILE_ENV}={path}: no such file; it is the stack's mlflow-auth.ini "
                        "(source the stack's services.env)")
    return {"username": config["mlflow"]["admin_username"], "password": config["mlflow"]["admin_password"],
            "secret_key": config["dispo"]["flask_secret_key"]}


def login_from_file() -> None:
    """Set MLflow's login variables from the file DISPO_MLFLOW_AUTH names, unless they are set already."""
    path = os.environ.get(AUTH_FILE_ENV)
    if not path or os.environ.get(_USER_ENV) or os.environ.get(_PASSWORD_ENV):
        return
    login = read_mlflow_auth(Path(path))
    os.environ[_USER_ENV], os.environ[_PASSWORD_ENV] = login["username"], login["password"]
