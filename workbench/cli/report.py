"""`dispo-wb report` and `dispo-wb ui`: thin Typer commands over workbench.report.page."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated, Optional

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
    looks: Annotated[Optional[str], typer.Option(
        help="judge a claims study at these looks instead of its declared ones, e.g. 5,10,15,20: look k uses "
             "the study's first n_k seeds")] = None,
) -> None:
    """Write an HTML report of a run, a study or an experiment and print where it is."""
    from workbench.report.page import make_report
    from workbench.sweep.claims import looks_problem

    if len(targets) > 1 and not compare:
        fail(f"one TARGET expected, got {len(targets)}: {' '.join(targets)}; "
             "to overlay runs use: report TARGET --compare RUN RUN ...")
    if compare and len(targets) < 2:
        fail("--compare needs at least one RUN after TARGET: report TARGET --compare RUN RUN ...")
    at = None
    if looks is not None:
        try:
            at = [int(x) for x in looks.split(",")]
        except ValueError:
            at = looks
        problem = looks_problem(at)
        if problem:
            fail(f"--looks: {problem.replace('[5, 10, 20]', '5,10,20')}")
    try:
        index = make_report(targets[0], compare=targets[1:] or None, tracking_uri=tracking_uri, out_dir=out_dir,
                            png=png, log_artifact=log_artifact, looks=at)
    except UserError as e:
        fail_user(e)
    typer.echo(f"report: {index}")
    verdicts = index.parent / "claims.csv"
    if verdicts.exists():
        from workbench.sweep.claims import RULE

        with verdicts.open() as f:
            for row in csv.DictReader(f):
                typer.echo(claim_line(row))
        typer.echo(f"rule: {RULE}")
        typer.echo(f"claims table: {verdicts}")


def _effect(text: str) -> str:
    """A claims.csv number; a link without paired seeds has no effect: its cell is empty."""
    return f"{float(text):+.3f}" if text not in ("", "nan") else "n/a"


def _look(row: dict, key: str) -> str:
    total = row.get("looks", "").split("/")
    return (f"look {row[key]} of {len(total)} ({total[int(row[key]) - 1]} seeds)" if row.get(key)
            else "undecided so far")


def _note(row: dict) -> str:
    from workbench.report.claims import detectable_text

    margin = f"margin {float(row['margin']):g}" if row.get("margin") else "no margin"
    if row.get("link_verdict") != "undecided" or row.get("detectable") in (None, "", "nan"):
        return margin
    return (f"{margin}; detectable at 80% power {detectable_text(float(row['detectable']))} at "
            f"{row['paired_seeds']} seeds, {detectable_text(float(row['detectable_at_max_seeds']))} at "
            f"{row['looks'].split('/')[-1]}")


def claim_line(row: dict) -> str:
    """One claims.csv row as the line `dispo-wb report` prints."""
    return (f"claim {row['claim']}: {row['verdict']}, {_look(row, 'look')} ({row['comparison']} "
            f"on {row['measure']}: {row['link_verdict']}, effect {_effect(row['effect'])} "
            f"[{_effect(row['ci_low'])}, {_effect(row['ci_high'])}], {row['seeds_agree']}/"
            f"{row['paired_seeds']} seeds agree, {_note(row)})")


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
