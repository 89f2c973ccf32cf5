"""Command registration (filled in by its area)."""

import typer


def register(app: typer.Typer) -> None:
    return None
