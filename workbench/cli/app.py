"""`dispo-wb`: the root Typer app, joined from one module per command group.

Each module holds thin commands that parse, then call the modules that do the work: `train`
(objectives, train, eval), `report` (report, ui), `sweep`, `runs`, `services`. Heavy modules
(torch, optuna, mlflow) load inside commands, so `--help` and a refused command line stay fast.
"""

from __future__ import annotations

import typer

from workbench.cli import report, runs, services, sweep, train
from workbench.cli.common import Group

app = typer.Typer(cls=Group, add_completion=False, no_args_is_help=True,
                  help="Ablation workbench for clipped policy-gradient RL of language models on math.")
app.add_typer(train.app)
app.add_typer(sweep.app, name="sweep")
app.add_typer(report.app)
app.add_typer(runs.app, name="runs")
app.add_typer(services.services_app, name="services")
