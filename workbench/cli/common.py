"""What every `dispo-wb` command shares: how a user error ends the command."""

from __future__ import annotations

import typer
import typer.core


def _flag_type_hidden(display_type_rich):
    """A flag takes no value, so help shows no type for it (typer 0.2x prints `<bool>`)."""

    def display(self, ctx):
        return None if getattr(self, "is_flag", False) and self.metavar is None else display_type_rich(self, ctx)

    return display


if not getattr(typer.core.TyperOption.display_type_rich, "_dispo_wrapped", False):
    typer.core.TyperOption.display_type_rich = _flag_type_hidden(typer.core.TyperOption.display_type_rich)
    typer.core.TyperOption.display_type_rich._dispo_wrapped = True


def fail(lines: list[str] | str, code: int = 2) -> None:
    """User errors: one line per problem on stderr, exit code 2, nothing written."""
    for line in [lines] if isinstance(lines, str) else lines:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)
