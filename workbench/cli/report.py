"""`dispo-wb report` and `dispo-wb ui`: thin Typer commands over workbench.report.page."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import Command, Storage, TrackingUri, fail, fail_user
from workbench.errors import UserError

app = typer.Typer()


@app.command(cls=Command)
def report(
    targets: Annotated[list[str], typer.Argument(
        help="run id, run name, study name or experiment name; with --compare, more runs to overlay",
        metavar="TARGET")],
    compare: Annotated[bool, typer.Option(
        "--compare", help="overlay the runs named after TARGET: report TARGET --compare RUN RUN ...")] = False,
    tracking_uri: TrackingUri = None,
    out_dir: Annotated[Path, typer.Option(help="reports land in OUT_DIR/<target>/")] = Path("reports"),
    png: Annotated[bool, typer.Option(help="also write PNG images (kaleido, needs Chrome or Chromium)")] = True,
    log_artifact: Annotated[bool, typer.Option(
        help="log the report folder to the run or the study's parent run")] = True,
) -> None:
    """Write an HTML report of a run, a study or an experiment and print where it is."""
    from workbench.report.page import make_report

    if len(targets) > 1 and not compare:
        fail(f"one TARGET expected, got {len(targets)}: {' '.join(targets)}; "
             "to overlay runs use: report TARGET --compare RUN RUN ...")
    if compare and len(targets) < 2:
        fail("--compare needs at least one RUN after TARGET: report TARGET --compare RUN RUN ...")
    try:
        index = make_report(targets[0], compare=targets[1:] or None, tracking_uri=tracking_uri, out_dir=out_dir,
                            png=png, log_artifact=log_artifact)
    except UserError as e:
        fail_user(e)
    typer.echo(f"report: {index}")
    verdicts = index.parent / "claims.csv"
    if verdicts.exists():
        with verdicts.open() as f:
            for row in csv.DictReader(f):
                typer.echo(f"claim {row['claim']}: {row['verdict']} ({row['comparison']} on {row['measure']}: "
                           f"effect {_effect(row['effect'])} [{_effect(row['ci_low'])}, {_effect(row['ci_high'])}], "
                           f"{row['seeds_agree']}/{row['paired_seeds']} seeds agree)")
        typer.echo(f"claims table: {verdicts}")


def _effect(text: str) -> str:
    """A claims.csv number; a link without paired seeds has no effect: its cell is empty."""
    return f"{float(text):+.3f}" if text not in ("", "nan") else "n/a"


@app.command(cls=Command)
def ui(
    port: Annotated[int, typer.Option(min=1, max=65535, help="MLflow UI port (optuna-dashboard: PORT+1)")] = 5000,
    host: Annotated[str, typer.Option(help="interface to listen on; loopback keeps it private")] = "127.0.0.1",
    tracking_uri: TrackingUri = None,
    optuna: Annotated[bool, typer.Option(
        "--optuna", help="also start optuna-dashboard (when installed) on a study storage")] = False,
    storage: Storage = None,
) -> None:
    """Start the MLflow UI on the store the runs were logged to and print each experiment's runs table.

    With --optuna, optuna-dashboard opens --storage, by default the latest study's (from its MLflow parent run).
    """
    from workbench.report.page import serve_ui
    from workbench.services.credentials import redact
    from workbench.services.stack import port_free
    from workbench.tracking import require_store
    from workbench.tracking.experiments import runs_tables

    try:
        uri = require_store(tracking_uri)
        served = uri.startswith(("http://", "https://"))  # an `mlflow server` is its own UI
        # Checked before anything is printed, so that a busy port is refused in one line.
        if not served and not port_free(host, port):
            raise UserError(f"port {port} on {host} is in use; pass --port with a free one")
        # MLflow 3 opens an experiment on its GenAI overview, where training runs do not show.
        for table in runs_tables(redact(uri) if served else f"http://{host}:{port}", uri):
            typer.echo(f"runs of {table.experiment}: {table.url}")
        serve_ui(port=port, host=host, tracking_uri=uri, optuna=optuna, storage=storage)
    except UserError as e:
        fail_user(e)
