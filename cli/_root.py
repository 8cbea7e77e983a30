"""The root ``assessment-store`` application; the command modules register on it."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from assessment_store.core import VERSION

app = typer.Typer(
    help="Event-sourced assessment store on Apache Kafka and PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"assessment-store {VERSION}\n")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Event-sourced assessment store on Apache Kafka and PostgreSQL."""
