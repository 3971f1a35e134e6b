"""`dispo-wb services up|down|status`: the local PostgreSQL + MLflow server stack (workbench.services.stack)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import Command, Group, ServicesDir, fail
from workbench.errors import UserError

services_app = typer.Typer(cls=Group, no_args_is_help=True,
                           help="Local PostgreSQL (Optuna storage, MLflow backend) and `mlflow server` for many-worker sweeps.")


def _print_urls(stack) -> None:
    env = stack.folder / "services.env"
    typer.echo(f"Optuna storage:  {stack.storage_url}")
    typer.echo(f"MLflow server:   {stack.tracking_uri}  (UI and tracking URI)")
    typer.echo(f"password file:   {stack.pgpass}  (mode 0600; libpq reads it through PGPASSFILE)")
    if stack.auth:
        typer.echo(f"MLflow login:    {stack.auth_file}  (mode 0600; clients read it through DISPO_MLFLOW_AUTH, "
                   "or set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)")
    typer.echo(f"use them with:   source {env}")
    typer.echo(f"  dispo-wb sweep STUDY.yaml --storage {stack.storage_url} --tracking-uri {stack.tracking_uri}")


@services_app.command("up", cls=Command)
def up_cmd(
    dir: ServicesDir = Path(".services"),
    host: Annotated[str, typer.Option(help="interface both services listen on; loopback keeps them private")] = "127.0.0.1",
    pg_port: Annotated[int, typer.Option(min=1, max=65535, help="PostgreSQL port")] = 5433,
    mlflow_port: Annotated[int, typer.Option(min=1, max=65535, help="MLflow server port")] = 5005,
    allow_subnet: Annotated[str | None, typer.Option(
        help="beyond loopback: the workers' network (CIDR, e.g. 10.77.0.0/24), the only one PostgreSQL admits "
             "besides loopback; MLflow then asks for the generated login")] = None,
) -> None:
    """Start PostgreSQL and the MLflow server (created on first use) and print the two URLs."""
    from workbench.services import stack as services

    try:
        stack = services.up(dir, host, pg_port, mlflow_port, allow_subnet=allow_subnet)
    except UserError as e:
        fail(str(e))
    _print_urls(stack)


@services_app.command("down", cls=Command)
def down_cmd(dir: ServicesDir = Path(".services")) -> None:
    """Stop the MLflow server and PostgreSQL; the data stays for the next `up`."""
    from workbench.services import stack as services

    try:
        services.down(dir)
    except UserError as e:
        fail(str(e))
    typer.echo(f"stopped the stack in {dir}")


@services_app.command("status", cls=Command)
def status_cmd(dir: ServicesDir = Path(".services")) -> None:
    """Whether each service answers; exit 1 when one does not."""
    from workbench.services import stack as services

    try:
        state = services.status(dir)
        stack = services.Stack.load(dir)
    except UserError as e:
        fail(str(e))
    for name, url in (("postgresql", stack.storage_url), ("mlflow", stack.tracking_uri)):
        typer.echo(f"{name:<11} {'up' if state[name] else 'down':<5} {url}")
    if not all(state.values()):
        raise typer.Exit(1)
