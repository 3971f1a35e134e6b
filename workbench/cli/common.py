"""What every `dispo-wb` command shares: the options several commands take, how a user error
ends a command, and the command classes that keep a flag's help free of a value type."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from workbench.config import DEFAULT_TRACKING_URI
from workbench.errors import UserError

TrackingUri = Annotated[Optional[str], typer.Option(
    help=f"MLflow store (default: MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="say what would be done, and do nothing")]
Settings = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY=VALUE", help="a config field, repeatable: --set sft.target_low=0.4, --set task.digits=2")]
Storage = Annotated[Optional[str], typer.Option(
    help="Optuna storage: journal file path or database URL (default: the study's own)")]
ServicesDir = Annotated[Path, typer.Option("--dir", help="where the stack keeps its data, password file and logs")]


def _untyped_flags(params: list) -> list:
    # A flag takes no value, yet typer 0.2x help prints `<bool>` beside it; an empty metavar shows nothing.
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class Command(TyperCommand):
    """Every `dispo-wb` command: `@app.command(cls=Command)`."""

    def get_params(self, ctx):
        return _untyped_flags(super().get_params(ctx))


class Group(TyperGroup):
    """Every `dispo-wb` command group: `typer.Typer(cls=Group)`."""

    def get_params(self, ctx):
        return _untyped_flags(super().get_params(ctx))


def fail(lines: list[str] | str, code: int = 2) -> None:
    """User errors: one line per problem on stderr, exit code 2, nothing written."""
    for line in [lines] if isinstance(lines, str) else lines:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


def fail_user(e: UserError, prefix: str = "") -> None:
    """A UserError (a ConfigError too: one line per problem) as `fail` prints it."""
    fail([f"{prefix}{line}" for line in e.lines])
