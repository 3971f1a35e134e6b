"""`dispo-wb runs clean`: mark runs left RUNNING by a process that is gone as KILLED, with the reason."""

from __future__ import annotations

import typer

from workbench.cli.common import Command, DryRun, Group, TrackingUri, fail_user
from workbench.errors import UserError

app = typer.Typer(cls=Group, no_args_is_help=True, help="Housekeeping of the runs in the MLflow store.")


@app.command("clean", cls=Command)
def clean(tracking_uri: TrackingUri = None, dry_run: DryRun = False) -> None:
    """Runs left RUNNING whose writing process on this host is gone become KILLED (reason in `failure_reason`).

    --dry-run lists what would be marked and changes nothing.
    """
    from workbench import tracking
    from workbench.tracking import stale as stale_runs

    try:
        uri = tracking.require_store(tracking_uri)
    except UserError as e:
        fail_user(e)
    marked, alive = stale_runs.clean(uri, dry_run=dry_run)
    verb = "would mark" if dry_run else "marked"
    for r in marked:
        typer.echo(f"{verb} KILLED: {r.run_id} {r.name}: {r.reason}")
    for r in alive:
        typer.echo(f"left RUNNING: {r.run_id} {r.name}: {r.note}")
    typer.echo(f"{len(marked)} run(s) {verb} KILLED, {len(alive)} left RUNNING")
