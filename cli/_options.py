"""Options and arguments shared by the commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
IdArg = Annotated[str, typer.Argument(help="Assessment id.")]
ExpectedVersion = Annotated[
    int | None, typer.Option("--expected-version", help="Refuse unless the assessment is at this version.")
]
PidFile = Annotated[Path | None, typer.Option(help="Write the pid here; '<pid-file>.ready' once consuming.")]


def mark_ready(pid_file: Path | None) -> None:
    """Write ``<pid-file>.ready``: the local stack waits for it to call a service started."""
    if pid_file is not None:
        pid_file.with_suffix(".ready").write_text("ready\n")

Actor = Annotated[str | None, typer.Option(help="Who makes the change (default: user@host).")]
AssessmentFilter = Annotated[str | None, typer.Option("--assessment", help="Only this assessment.")]
