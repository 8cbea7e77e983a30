"""``assessment-store migrate …``: the migration off the legacy service, step by step (docs/migration.md)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from assessment_store.core import Settings

from ._console import out
from ._console import run_cli as _run
from ._options import JsonFlag

migrate_app = typer.Typer(help="Validate the migration off legacy (docs/migration.md).", no_args_is_help=True)


@migrate_app.command("validate")
def migrate_validate(
    legacy_url: Annotated[str, typer.Option("--legacy-url", help="The legacy service's HTTP face (bin/legacy-http.js).")],
    as_json: JsonFlag = False,
    buckets: Annotated[int, typer.Option("--buckets", min=1, max=1_048_576,
                                         help="Buckets of ids compared by checksum.")] = 4096,
    max_findings: Annotated[int, typer.Option("--max-findings", min=0,
                                              help="Findings shown per kind (all are counted).")] = 20,
    id_prefix: Annotated[str, typer.Option("--id-prefix", help="Only the ids starting with this.")] = "",
    deep: Annotated[bool, typer.Option("--deep", help="Check every history and fold, not a sample.")] = False,
) -> None:
    """Legacy vs store: lost, extra, corrupted, duplicates, illegal histories, projection vs fold.
    Exit 0 when they agree, 1 (refused) with findings."""
    from assessment_store.migration import exit_code, render, report_json, validate_after

    report = _run(validate_after(Settings(), legacy_url, buckets=buckets, max_findings=max_findings,
                                 id_prefix=id_prefix, deep=deep))
    if as_json:
        sys.stdout.write(report_json(report) + "\n")
    else:
        render(report, out)
    raise typer.Exit(exit_code(report))
