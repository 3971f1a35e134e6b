"""`dispo-wb runs clean`: mark runs left RUNNING by a process that is gone as KILLED, with the reason."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from workbench.cli.common import fail
from workbench.errors import UserError

runs_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Housekeeping of the runs in the MLflow store.")


@runs_app.command("clean")
def clean_cmd(
    tracking_uri: Annotated[Optional[str], typer.Option(help="MLflow store (default sqlite:///mlflow.db)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be marked, change nothing")] = False,
) -> None:
    """Runs left RUNNING whose writing process on this host is gone become KILLED (reason in `failure_reason`)."""
    from workbench import tracking
    from workbench.tracking import stale as stale_runs

    try:
        uri = tracking.require_store(tracking_uri)
    except UserError as e:
        fail(str(e))
    marked, alive = stale_runs.clean(uri, dry_run=dry_run)
    verb = "would mark" if dry_run else "marked"
    for r in marked:
        typer.echo(f"{verb} KILLED: {r.run_id} {r.name}: {r.reason}")
    for r in alive:
        typer.echo(f"left RUNNING: {r.run_id} {r.name}: {r.note}")
    typer.echo(f"{len(marked)} run(s) {verb} KILLED, {len(alive)} left RUNNING")


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")
