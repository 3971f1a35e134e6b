"""What every `dispo-wb` command shares: how a user error ends the command."""

from __future__ import annotations

import typer


def fail(lines: list[str] | str, code: int = 2) -> None:
    """User errors: one line per problem on stderr, exit code 2, nothing written."""
    for line in [lines] if isinstance(lines, str) else lines:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)
