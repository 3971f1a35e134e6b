"""`dispo-wb report` and `dispo-wb ui`: thin Typer commands over workbench.report.page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from workbench.cli.common import fail
from workbench.errors import UserError

TRACKING_HELP = "MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"


def register(app: typer.Typer) -> None:
    """Add the `report` and `ui` commands to the workbench's Typer app."""

    @app.command()
    def report(
        targets: Annotated[list[str], typer.Argument(
            help="run id, run name, study name or experiment name; with --compare, more runs to overlay",
            metavar="TARGET")],
        compare: Annotated[bool, typer.Option(
            "--compare", help="overlay the runs named after TARGET: report TARGET --compare RUN RUN ...")] = False,
        tracking_uri: Annotated[Optional[str], typer.Option(help=TRACKING_HELP)] = None,
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

        if len(targets) > 1 and not compare:
            fail(f"one TARGET expected, got {len(targets)}: {' '.join(targets)}; "
                  "to overlay runs use: report TARGET --compare RUN RUN ...")
        if compare and len(targets) < 2:
            fail("--compare needs at least one RUN after TARGET: report TARGET --compare RUN RUN ...")
        from workbench.sweep.claims import looks_problem

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
            fail(str(e))
        typer.echo(f"report: {index}")
        verdicts = index.parent / "claims.csv"
        if verdicts.exists():
            import csv

            from workbench.report.claims import detectable_text
            from workbench.sweep.claims import RULE

            def num(text: str) -> str:  # a link without paired seeds has no effect: the CSV cell is empty
                return f"{float(text):+.3f}" if text not in ("", "nan") else "n/a"

            def look(row: dict, key: str) -> str:
                total = row.get("looks", "").split("/")
                return (f"look {row[key]} of {len(total)} ({total[int(row[key]) - 1]} seeds)" if row.get(key)
                        else "undecided so far")

            def note(row: dict) -> str:
                margin = f"margin {float(row['margin']):g}" if row.get("margin") else "no margin"
                if row.get("link_verdict") != "undecided" or row.get("detectable") in (None, "", "nan"):
                    return margin
                return (f"{margin}; detectable at 80% power {detectable_text(float(row['detectable']))} at "
                        f"{row['paired_seeds']} seeds, {detectable_text(float(row['detectable_at_max_seeds']))} at "
                        f"{row['looks'].split('/')[-1]}")

            with verdicts.open() as f:
                for row in csv.DictReader(f):
                    typer.echo(f"claim {row['claim']}: {row['verdict']}, {look(row, 'look')} ({row['comparison']} "
                               f"on {row['measure']}: {row['link_verdict']}, effect {num(row['effect'])} "
                               f"[{num(row['ci_low'])}, {num(row['ci_high'])}], {row['seeds_agree']}/"
                               f"{row['paired_seeds']} seeds agree, {note(row)})")
            typer.echo(f"rule: {RULE}")
            typer.echo(f"claims table: {verdicts}")

    @app.command()
    def ui(
        port: Annotated[int, typer.Option(min=1, max=65535, help="MLflow UI port (optuna-dashboard: PORT+1)")] = 5000,
        host: Annotated[str, typer.Option(help="interface to listen on; loopback keeps it private")] = "127.0.0.1",
        tracking_uri: Annotated[Optional[str], typer.Option(help=TRACKING_HELP)] = None,
        optuna: Annotated[bool, typer.Option(
            "--optuna", help="also start optuna-dashboard (when installed) on a study storage")] = False,
        storage: Annotated[Optional[str], typer.Option(
            help="Optuna storage for --optuna (default: the latest study's, from its MLflow parent run)")] = None,
    ) -> None:
        """Start the MLflow UI on the store the runs were logged to and print its address."""
        from workbench.report.page import serve_ui

        try:
            serve_ui(port=port, host=host, tracking_uri=tracking_uri, optuna=optuna, storage=storage)
        except UserError as e:
            fail(str(e))
