"""`dispo-wb sweep`: run a study file (`sweep STUDY.yaml`, alias `sweep run`), or `sweep status STUDY`.

Imported by `workbench.cli.app` at start-up, so heavy modules (optuna, mlflow) load inside commands.
A program that embeds the CLI trains trials with its own function through the click context
object: `app(obj=SweepHooks(train_fn=...))` (the kill and services tests run sweeps so, on
tests/fake_trainer.py, through tests/fake_cli.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from workbench.cli.common import Command, Group, Storage, TrackingUri, fail, fail_user
from workbench.config import DEFAULT_TRACKING_URI, ConfigError
from workbench.errors import UserError
from workbench.params import bound_off

if TYPE_CHECKING:
    from workbench.train.results import TrainFn


@dataclass(frozen=True)
class SweepHooks:
    """What an embedding program swaps in `dispo-wb sweep`: the function that trains a trial's seed."""

    train_fn: TrainFn


class _RunByDefault(Group):
    """`dispo-wb sweep FILE ...` means `dispo-wb sweep run FILE ...`."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_RunByDefault, no_args_is_help=True,
                  help="Optuna studies over the clip space: `dispo-wb sweep STUDY.yaml`, `dispo-wb sweep status STUDY`.")


@app.command("run", cls=Command)
def run(
    ctx: typer.Context,
    study: Annotated[Path, typer.Argument(help="study file (YAML), e.g. studies/clip_grid.yaml")],
    workers: Annotated[Optional[int], typer.Option(min=1, help="trials at once, as processes (default: the file's `workers`)")] = None,
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Run a study, or continue it: finished trials are kept, interrupted ones are run again."""
    from workbench.sweep.study_file import load_study_file
    from workbench.sweep import run_study

    try:
        spec = load_study_file(study)
    except ConfigError as e:
        fail_user(e, prefix=f"{study}: ")
    try:
        from workbench.tracking.location import check_writable_store

        check_writable_store(tracking_uri)  # a store that cannot take a run (full, read-only) writes nothing
        hooks = ctx.find_object(SweepHooks)
        result = run_study(spec, workers=workers, storage=storage, tracking_uri=tracking_uri, echo=typer.echo,
                           **({"train_fn": hooks.train_fn} if hooks else {}))
    except UserError as e:
        fail_user(e)
    except KeyboardInterrupt:
        typer.echo("sweep interrupted; run the same command to continue it", err=True)
        raise typer.Exit(130)
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(result.counts.items()))
    typer.echo(f"study {result.study_name}: {counts} in {result.wall_s:.0f}s")
    typer.echo(f"  trials:  dispo-wb sweep status {study}")
    where = _tracking(tracking_uri)
    ui = where if where.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {where}"
    typer.echo(f"  MLflow:  {ui}  (parent run {result.parent_run_id})")
    typer.echo(f"  report:  dispo-wb report {result.study_name}"
               + (f" --tracking-uri {_tracking(tracking_uri)}" if tracking_uri else ""))
    if not result.complete:
        fail(f"study {result.study_name} is not complete (failed trials are listed by `dispo-wb sweep status`); "
              "run the same command again to retry them", code=1)


@app.command("status", cls=Command)
def status(
    study: Annotated[str, typer.Argument(help="study file (YAML) or study name")],
    storage: Storage = None,
) -> None:
    """Trials of a study, read from its Optuna storage alone: params, values, state, collapse, MLflow run."""
    from rich.console import Console

    from workbench.sweep import study_status

    try:
        info = study_status(study, storage)
    except ConfigError as e:
        fail_user(e, prefix=f"{study}: ")
    except UserError as e:
        fail_user(e)
    console = Console()
    console.print(render_status(info, console.width))
    if not info.rows:
        console.print(f"study {info.name} has no trials yet")
    elif info.best:
        what = "best trial" if len(info.directions) == 1 else "Pareto front"
        console.print(f"{what}: {', '.join(f'#{n}' for n in info.best)}")
    else:
        console.print("no trial has completed yet")


RUN_ID_SHORT = 8  # characters of an MLflow run id shown on a narrow terminal (a unique prefix in practice)


def render_status(info, width: int = 200) -> Any:
    """A rich Table of a `sweep.StudyStatus`; under 120 columns run ids are cut to their first 8 characters."""
    from rich.table import Table

    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(info.counts.items())) or "no trials"
    target = f" of {info.n_trials}" if info.n_trials else ""
    narrow = width < 120
    caption = f"storage {info.storage}" + ("; run ids: first 8 characters, bounds without eps_ (wider terminal: "
                                           "full)" if narrow else "")
    table = Table(title=f"study {info.name}: {counts}{target}", caption=caption, padding=(0, 1 if not narrow else 0),
                  collapse_padding=True)
    params = sorted({k for r in info.rows for k in r.params})
    table.add_column("#", justify="right")
    table.add_column("state")
    for p in params:
        table.add_column(p.removeprefix("eps_") if narrow else p, justify="right", overflow="fold")
    for label in info.directions:
        table.add_column(_direction_header(label), justify="right", overflow="fold")
    table.add_column("collapse", overflow="fold")
    table.add_column("MLflow run", no_wrap=True, min_width=RUN_ID_SHORT if narrow else 32)
    table.add_column("time", no_wrap=True)
    table.add_column("note", overflow="fold")
    best = set(info.best)
    styles = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "dim"}
    for r in info.rows:
        values = r.values or [None] * len(info.directions)
        table.add_row(f"{r.number}{'*' if r.number in best else ''}", f"[{styles.get(r.state, '')}]{r.state}",
                      *[_fmt(r.params.get(p), p) for p in params], *[_fmt(v) for v in values],
                      # one collapsed seed per line: a fold inside one would split its kind from its step
                      (r.collapse or "").replace("; ", ";\n") or ("none" if r.state in ("COMPLETE", "PRUNED") else ""),
                      (r.run_id or "")[:RUN_ID_SHORT] if narrow else r.run_id or "",
                      f"{r.duration_s:.0f}s" if r.duration_s is not None else "", r.note)
    return table


def _direction_header(label: str) -> str:
    """'maximize eval/micro/accuracy' -> 'eval/micro/accuracy ↑'."""
    way, _, what = label.partition(" ")
    return f"{what} {'↑' if way == 'maximize' else '↓' if way == 'minimize' else way}"


def _fmt(v: Any, name: str = "") -> str:
    """A value as the report prints it: a switched-off bound (`workbench.params.bound_off`) is `off`."""
    if v is None:
        return ""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and name.startswith("eps_") and bound_off(name, v):
        return "off"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4g}"
    return str(v)


def _tracking(uri: str | None) -> str:
    import os

    from workbench.services.credentials import redact

    return redact(uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)
