"""The root ``assessment-store`` application; the command modules register on it."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from assessment_store.core import VERSION

from ._console import EXIT_USAGE

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


def run_app() -> None:
    """Run the root application with the commands registered on it (all of them through
    ``_main``; the service commands alone through ``_entry``'s fast path)."""
    try:
        app()
    except SystemExit as e:
        # Click prints a usage error and exits with status 2. None of the store's own exit codes is 2,
        # so a 2 here is always click's usage error: it leaves as EX_USAGE, distinct from every failure.
        if e.code == 2:
            raise SystemExit(EXIT_USAGE) from None
        raise
