"""The local stack for many-worker sweeps: PostgreSQL (Optuna storage, MLflow backend) and `mlflow server`.

`up(folder)` makes, under `folder` (default `.services/` in the project):
- `pg/`: a PostgreSQL cluster from Debian's `postgresql` package (`initdb`, `pg_ctl`), listening on
  127.0.0.1 only (unless `host` says otherwise), scram-sha-256 passwords, two databases
  (`optuna`, `mlflow`) owned by the role `dispo`; pg_hba.conf admits loopback and, on another
  interface, only the clients' subnet named by `allow_subnet`;
- `pgpass`: the generated password in libpq's pgpass format, mode 0600. The URLs printed carry
  no password: libpq reads it from the file named by `PGPASSFILE`, so neither the URLs, the
  process list, MLflow tags nor logs ever hold it;
- `mlflow server` on 127.0.0.1 with the `mlflow` database as backend store and `artifacts/` as
  the artifact root it serves (clients upload through the server, nothing else is shared);
- `services.env`: the lines to `source` (PGPASSFILE, DISPO_STORAGE, MLFLOW_TRACKING_URI, and
  DISPO_MLFLOW_AUTH for a stack beyond loopback).

Beyond loopback (`host` not 127.0.0.1 / localhost / ::1) the MLflow server is MLflow's basic-auth
app (`--app-name basic-auth`): `mlflow-auth.ini` (mode 0600) is its config, with a generated
admin password and its user database `auth.db` in the stack folder; clients read the login from
that file (workbench.services.credentials.login_from_file) or from MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD. The server answers only requests whose Host header is the address
given (`--allowed-hosts`), and browsers only from its own origin (`--cors-allowed-origins`).
On loopback nothing changes: no login, as before.

Connections are sized for `WORKER_PROCESSES` sweep processes at once (coordinators and their
worker processes, on all hosts together: e.g. 16 hosts running `sweep --workers 3`): each holds at
most `OPTUNA_POOL` + `OPTUNA_OVERFLOW` pooled connections plus one for the study lock, the MLflow
server's workers hold `MLFLOW_POOL` + `MLFLOW_OVERFLOW` each, and `max_connections` covers the
sum with room for psql and status commands. More processes than that: raise WORKER_PROCESSES.

PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` system user
the Debian package creates, and its commands run as that user.
"""

from __future__ import annotations

import glob
import importlib.util
import ipaddress
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import UserError
from workbench.services import credentials

DEFAULT_DIR = Path(".services")
PG_PORT, MLFLOW_PORT = 5433, 5005
ROLE, DATABASES = "dispo", ("optuna", "mlflow")
MLFLOW_ADMIN = "dispo"  # the basic-auth app's admin login beyond loopback
WORKER_PROCESSES = 64
OPTUNA_POOL, OPTUNA_OVERFLOW = 2, 2  # a worker uses one connection at a time, its heartbeat thread another
MLFLOW_WORKERS, MLFLOW_POOL, MLFLOW_OVERFLOW = 2, 5, 10
HEALTHCHECK_S = 300
MAX_CONNECTIONS = WORKER_PROCESSES * (OPTUNA_POOL + OPTUNA_OVERFLOW + 1) + MLFLOW_WORKERS * (
    MLFLOW_POOL + MLFLOW_OVERFLOW) + 20
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Stack:
    """Where one stack lives and how it is reached; `Stack.load(folder)` reads a started one back."""

    folder: Path
    host: str = "127.0.0.1"
    pg_port: int = PG_PORT
    mlflow_port: int = MLFLOW_PORT

    @property
    def pgpass(self) -> Path:
        return self.folder / "pgpass"

    @property
    def auth(self) -> bool:
        """Whether the MLflow server asks for a login: yes on any address but loopback."""
        return self.host not in _LOOPBACK

    @property
    def auth_file(self) -> Path:
        return self.folder / "mlflow-auth.ini"

    @property
    def storage_url(self) -> str:
        return f"postgresql://{ROLE}@{self.host}:{self.pg_port}/optuna"

    @property
    def backend_url(self) -> str:
        return f"postgresql://{ROLE}@{self.host}:{self.pg_port}/mlflow"

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    def env(self) -> dict[str, str]:
        env = {"PGPASSFILE": str(self.pgpass.resolve()), "DISPO_STORAGE": self.storage_url,
               "MLFLOW_TRACKING_URI": self.tracking_uri}
        if self.auth:
            env[credentials.AUTH_FILE_ENV] = str(self.auth_file.resolve())
        return env

    @classmethod
    def load(cls, folder: Path) -> "Stack":
        env = folder / "services.env"
        if not env.is_file():
            raise UserError(f"no stack in {folder} (no services.env); start one with `dispo-wb services up`")
        values = dict(line.removeprefix("export ").split("=", 1) for line in env.read_text().split("\n") if "=" in line)
        host_port = values["DISPO_STORAGE"].split("@", 1)[1].split("/", 1)[0]
        host, pg_port = host_port.rsplit(":", 1)
        return cls(folder, host, int(pg_port), int(values["MLFLOW_TRACKING_URI"].rsplit(":", 1)[1]))


def pg_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise UserError(f"PostgreSQL's {name} is not installed; install Debian's package: apt-get install postgresql")
    return found


def _owner() -> str | None:
    """The user PostgreSQL runs as: None (this user) unless we are root, then Debian's `postgres`."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise UserError("PostgreSQL cannot run as root and there is no `postgres` user; "
                        "install Debian's postgresql package or run as another user") from None
    return "postgres"


def _run(argv: list[str], *, user: str | None = None, env: dict[str, str] | None = None) -> str:
    # An inherited PGPASSWORD (another database's) would win over the stack's pgpass file.
    base = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    out = subprocess.run(argv, capture_output=True, text=True, user=user, env={**base, **(env or {})})
    if out.returncode != 0:
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"{Path(argv[0]).name} failed (exit {out.returncode}): {last[0]}")
    return out.stdout


def port_free(host: str, port: int) -> bool:
    """Whether `port` on `host` can be listened on now (IPv4 or IPv6 address)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# --- PostgreSQL ---------------------------------------------------------------------------------------


def _pg_dir(stack: Stack) -> Path:
    return stack.folder / "pg"


def subnet(text: str) -> str:
    """`text` as a network in CIDR form (`10.77.0.0/24`), or a UserError saying what is allowed."""
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError as e:
        raise UserError(f"--allow-subnet {text!r} is not a network ({e}); give one in CIDR form, "
                        "e.g. 10.77.0.0/24") from None


def _init_cluster(stack: Stack, password: str, user: str | None, allow_subnet: str | None) -> None:
    data = _pg_dir(stack)
    data.mkdir(parents=True, mode=0o700)
    pwfile = stack.folder / ".initdb-pw"
    pwfile.write_text(password + "\n")
    os.chmod(pwfile, 0o600)
    if user:
        uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
        for p in (data, pwfile):
            os.chown(p, uid, gid)
    try:
        _run([pg_bin("initdb"), "-D", str(data.resolve()), "-U", ROLE, "--auth=scram-sha-256",
              f"--pwfile={pwfile.resolve()}", "-E", "UTF8", "--no-locale"], user=user)
    finally:
        pwfile.unlink()
    if allow_subnet:  # initdb admits loopback only; the clients' subnet gets password logins, nobody else
        with open(data / "pg_hba.conf", "a") as f:
            f.write(f"host all all {allow_subnet} scram-sha-256\n")


def pg_start(stack: Stack) -> None:
    data, user = _pg_dir(stack).resolve(), _owner()
    opts = f"-c listen_addresses={stack.host} -p {stack.pg_port} -k {data} -c max_connections={MAX_CONNECTIONS}"
    _run([pg_bin("pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-o", opts, "-w", "-t", "60", "start"],
         user=user)


def pg_stop(stack: Stack) -> None:
    data = _pg_dir(stack).resolve()
    if (data / "postmaster.pid").exists():
        _run([pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], user=_owner())


def pg_running(stack: Stack) -> bool:
    out = subprocess.run([pg_bin("pg_isready"), "-h", stack.host, "-p", str(stack.pg_port), "-q"])
    return out.returncode == 0


def _create_databases(stack: Stack) -> None:
    env = {"PGPASSFILE": str(stack.pgpass.resolve())}
    have = _run([pg_bin("psql"), "-h", stack.host, "-p", str(stack.pg_port), "-U", ROLE, "-d", "postgres", "-Atc",
                 "select datname from pg_database"], env=env).split()
    for db in DATABASES:
        if db not in have:
            _run([pg_bin("createdb"), "-h", stack.host, "-p", str(stack.pg_port), "-U", ROLE, db], env=env)


# --- MLflow server ------------------------------------------------------------------------------------


def _mlflow_pidfile(stack: Stack) -> Path:
    return stack.folder / "mlflow.pid"


def mlflow_start(stack: Stack, timeout_s: float = 600) -> None:
    # Each uvicorn worker imports MLflow (and the auth app) on its own: minutes on a loaded machine.
    artifacts = (stack.folder / "artifacts").resolve()
    artifacts.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", stack.backend_url,
            "--artifacts-destination", str(artifacts), "--host", stack.host, "--port", str(stack.mlflow_port),
            "--workers", str(MLFLOW_WORKERS),
            # uvicorn's supervisor kills a worker that misses its 5 s health ping; a worker still
            # importing MLflow on a loaded machine misses it, and they died and restarted endlessly.
            "--uvicorn-opts", f"--timeout-worker-healthcheck {HEALTHCHECK_S}"]
    env = {**{k: v for k, v in os.environ.items() if k not in _LOGIN_ENV},
           "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true"),  # see workbench.tracking
           "PGPASSFILE": str(stack.pgpass.resolve()), "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(MLFLOW_POOL),
           "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(MLFLOW_OVERFLOW)}
    if stack.auth:
        if importlib.util.find_spec("flask_wtf") is None:
            raise UserError("MLflow's login (basic-auth app), needed beyond loopback, requires Flask-WTF; "
                            "install the services extra: pip install -e '.[services]'")
        where = f"[{stack.host}]" if ":" in stack.host else stack.host
        argv += ["--app-name", "basic-auth", "--allowed-hosts", f"{where}:{stack.mlflow_port},{where}",
                 "--cors-allowed-origins", stack.tracking_uri]
        # The password stays in the 0600 config file; the CSRF key goes by environment (never argv).
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(stack.auth_file.resolve())
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = credentials.read_mlflow_auth(stack.auth_file)["secret_key"]
    log = open(stack.folder / "mlflow.log", "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    _mlflow_pidfile(stack).write_text(str(proc.pid))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"mlflow server exited with code {proc.returncode}; see {stack.folder / 'mlflow.log'}")
        if mlflow_running(stack):
            return
        time.sleep(0.5)
    raise UserError(f"mlflow server did not answer on {stack.tracking_uri} within {timeout_s:.0f} s; "
                    f"see {stack.folder / 'mlflow.log'}")


# Inherited logins (another server's) must not reach the server: its admin comes from the config file.
_LOGIN_ENV = ("PGPASSWORD", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_AUTH_ADMIN_USERNAME",
              "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AUTH_CONFIG_PATH")


def mlflow_running(stack: Stack) -> bool:
    try:
        with urllib.request.urlopen(f"{stack.tracking_uri}/health", timeout=10) as r:  # seconds under load
            return r.status == 200
    except OSError:
        return False


def mlflow_stop(stack: Stack, timeout_s: float = 20) -> None:
    pidfile = _mlflow_pidfile(stack)
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)  # the server's own session: its workers go with it
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if not _alive(pid):
            break
    pidfile.unlink()


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if waited:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A server whose starter died (a killed `services up` or test) belongs to init; until init
    # reaps it, it is a zombie, which kill(pid, 0) still finds: it has exited all the same.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


# --- the stack ------------------------------------------------------------------------------------------


def up(folder: Path = DEFAULT_DIR, host: str = "127.0.0.1", pg_port: int = PG_PORT,
       mlflow_port: int = MLFLOW_PORT, with_mlflow: bool = True, allow_subnet: str | None = None) -> Stack:
    """Start (creating on first use) the stack in `folder`; returns it. Idempotent.

    `with_mlflow=False` starts PostgreSQL alone (tests of the Optuna side). A `host` beyond
    loopback needs `allow_subnet`, the clients' network (CIDR), the only one PostgreSQL admits
    besides loopback; it is read when the stack is created.
    """
    stack = Stack(folder, host, pg_port, mlflow_port)
    if allow_subnet is not None:
        allow_subnet = subnet(allow_subnet)
    if stack.auth and allow_subnet is None and not (folder / "services.env").is_file():
        raise UserError(f"--host {host} is not loopback: name the workers' subnet with --allow-subnet "
                        "(CIDR, e.g. 10.77.0.0/24); PostgreSQL admits that subnet and loopback only")
    if (folder / "services.env").is_file():
        stack = Stack.load(folder)  # a made stack keeps its ports and interface
    folder.mkdir(parents=True, exist_ok=True)
    user = _owner()
    if user:  # the postgres user must reach its data folder
        os.chmod(folder, 0o755)
        if subprocess.run(["test", "-x", str(folder.resolve())], user=user).returncode != 0:
            raise UserError(f"the {user} user cannot reach {folder.resolve()} (a parent folder is private); "
                            "pass --dir with a folder it can reach, e.g. under /srv or /tmp")
    if not _pg_dir(stack).exists():
        for port in (stack.pg_port, stack.mlflow_port):
            if not port_free(stack.host, port):
                raise UserError(f"port {port} on {stack.host} is in use; pick free ones with --pg-port / --mlflow-port")
        password = secrets.token_urlsafe(24)
        if stack.pgpass.exists():  # left by a creation that failed half-way
            stack.pgpass.unlink()
        credentials.private_file(stack.pgpass, f"{stack.host}:{stack.pg_port}:*:{ROLE}:{password}\n")
        if stack.auth:
            if stack.auth_file.exists():
                stack.auth_file.unlink()
            credentials.write_mlflow_auth(stack.auth_file, f"sqlite:///{(folder / 'auth.db').resolve()}", MLFLOW_ADMIN)
        _init_cluster(stack, password, user, allow_subnet)
        (folder / "services.env").write_text("".join(f"export {k}={v}\n" for k, v in stack.env().items()))
    if not pg_running(stack):
        pg_start(stack)
    _create_databases(stack)
    if with_mlflow and not mlflow_running(stack):
        mlflow_start(stack)
    return stack


def down(folder: Path = DEFAULT_DIR) -> Stack:
    """Stop the MLflow server, then PostgreSQL; the data stays for the next `up`."""
    stack = Stack.load(folder)
    mlflow_stop(stack)
    pg_stop(stack)
    return stack


def status(folder: Path = DEFAULT_DIR) -> dict[str, bool]:
    stack = Stack.load(folder)
    return {"postgresql": pg_running(stack), "mlflow": mlflow_running(stack)}
