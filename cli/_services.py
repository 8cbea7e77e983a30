"""The long-running processes (processor, projector, HTTP API) and the projection's maintenance:
``replay``, ``quarantine``, ``at`` (time travel)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from assessment_store.core import Settings

from ._assessments import show_assessment
from ._console import EXIT_REFUSED, EXIT_USAGE, err, out
from ._console import fail as _fail
from ._console import run_cli as _run
from ._console import serve_forever as _serve_forever
from ._options import IdArg, JsonFlag, PidFile
from ._root import app

@app.command("processor")
def processor(pid_file: PidFile = None) -> None:
    """Run the command processor (the single writer of the events topic) in the foreground until SIGTERM."""
    from assessment_store.streams import CommandProcessor, ProcessorStats

    stats = ProcessorStats()
    _serve_forever(pid_file, "processor", lambda settings: CommandProcessor(settings, stats=stats), stats)


@app.command("projector")
def projector(pid_file: PidFile = None) -> None:
    """Run the projector (fold the events and outcomes topics into PostgreSQL) in the foreground until SIGTERM."""
    from assessment_store.projections import Projector, ProjectorStats

    stats = ProjectorStats()
    _serve_forever(pid_file, "projector", lambda settings: Projector(settings, stats=stats), stats)



@app.command("schema-registry")
def schema_registry(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option("--port", min=0, max=65535,
                                             help="Port (default: ASSESSMENT_STORE_SCHEMA_REGISTRY_PORT).")] = None,
    state_file: Annotated[Path | None, typer.Option("--state-file", help="Keep schemas and ids in this JSON file.")] = None,
) -> None:
    """Serve the minimal Confluent-compatible schema registry (a test double of the protocol: the
    subset the store uses; docs/events.md) in the foreground until SIGTERM. `stack up schema-registry`
    runs it in the background."""
    import signal
    import threading

    from assessment_store.stack import MiniSchemaRegistry

    registry = MiniSchemaRegistry(host, Settings().schema_registry_port if port is None else port, state_file)
    stop = threading.Event()
    # Served from a thread: the server's shutdown must come from another thread than its loop's.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with registry:
        err.print(f"schema registry (protocol double) on {registry.url}")
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass


@app.command("replay")
def replay_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Rebuild and verify, but do not swap.")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Discard an interrupted rebuild and start from 0.")] = False,
    keep_old: Annotated[bool, typer.Option("--keep-old", help="Keep the replaced schema as projection_old_<time>.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Swap even if verification finds differences.")] = False,
) -> None:
    """Rebuild the projection from offset 0 into fresh tables while the live one serves, verify it
    (row counts, versions, checksum) and swap it in atomically. Interrupted, it resumes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from assessment_store.projections import replay

    with Progress(
        TextColumn("[bold]replay[/]"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} events/s"), TimeRemainingColumn(), console=err,
    ) as bar:
        task = bar.add_task("replay", total=None, rate="-")
        t0 = time.monotonic()
        seen = 0

        def on_total(total: int, done: int) -> None:
            bar.update(task, total=total, completed=done)

        def on_batch(n: int) -> None:
            nonlocal seen
            seen += n
            bar.update(task, advance=n, rate=f"{seen / max(time.monotonic() - t0, 1e-6):,.0f}")

        report = _run(replay(Settings(), dry_run=dry_run, restart=restart, keep_old=keep_old, force=force,
                             on_total=on_total, on_batch=on_batch))
    v = report.verification
    out.print(f"folded {report.events_folded:,} records in {report.seconds:.1f} s"
              f"{' (resumed)' if report.resumed else ''}"
              f"{f' by {report.workers} processes' if report.workers > 1 else ''}; verification "
              f"{'[green]passed[/]' if v.ok else '[red]FAILED[/]'}: assessments {v.live_assessments}/{v.rebuilt_assessments},"
              f" events {v.live_events}/{v.rebuilt_events}, version mismatches {v.version_mismatches},"
              f" checksum {v.live_checksum} / {v.rebuilt_checksum}")
    if report.quarantined:
        out.print(f"[yellow]{report.quarantined} assessment(s) quarantined[/] in the rebuild: PostgreSQL refused a value"
                  " of their events (`assessment-store quarantine list` once swapped in)")
    out.print("swapped in" if report.swapped else "dry run: not swapped (the rebuild stays in schema projection_rebuild)")


# --- quarantine (self-contained: the group, its two commands) -----------------------------

quarantine_app = typer.Typer(
    help="Assessments the projector quarantined because PostgreSQL refused a value of one of their events.",
    no_args_is_help=True,
)
app.add_typer(quarantine_app, name="quarantine")


@quarantine_app.command("list")
def quarantine_list(as_json: JsonFlag = False) -> None:
    """Quarantined assessments: why, where the first refused event sits, how many events are held."""
    from assessment_store.projections import list_quarantine

    entries = _run(list_quarantine(Settings()))
    if as_json:
        out.print_json(json.dumps([e.__dict__ for e in entries], default=str))
        return
    t = Table(title=f"{len(entries)} quarantined assessment(s)")
    for col in ("assessment", "since", "first refused event", "held", "reason", "re-folds"):
        t.add_column(col)
    for e in entries:
        t.add_row(e.assessment_id, f"{e.quarantined_at:%Y-%m-%d %H:%M:%S}", f"{e.topic}/{e.partition}/{e.offset}",
                  str(e.held), f"{e.sqlstate or ''} {e.reason}".strip(),
                  f"{e.refold_attempts}" + (f" (last: {e.last_refold_error})" if e.last_refold_error else ""))
    out.print(t)


@quarantine_app.command("refold")
def quarantine_refold(assessment_id: IdArg) -> None:
    """Re-apply a quarantined assessment's held events in log order, after a fix. Exit 1 if refused again."""
    from assessment_store.projections import refold

    result = _run(refold(Settings(), assessment_id))
    if not result.refolded:
        _fail(f"still refused, {assessment_id!r} stays quarantined: {result.error}", EXIT_REFUSED)
    out.print(f"re-folded {result.events} event(s) of {assessment_id!r}: now at version {result.version}")



@app.command("at")
def at_cmd(
    assessment_id: Annotated[str | None, typer.Argument(help="One assessment; omit for counts per state.")] = None,
    at_time: Annotated[str | None, typer.Option("--time", help="ISO-8601 time, e.g. 2026-11-24T09:00:00Z.")] = None,
    offset: Annotated[int | None, typer.Option("--offset", help="Offset in the assessment's partition (inclusive).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Time travel: an assessment, or the counts per state, as of a time or offset, from the log."""
    from datetime import datetime

    from assessment_store.projections import counts_at, state_at

    when = None
    if at_time is not None:
        try:
            when = datetime.fromisoformat(at_time.replace("Z", "+00:00"))
        except ValueError:
            _fail(f"--time {at_time!r} is not an ISO-8601 time", EXIT_USAGE)
        if when is not None and when.tzinfo is None:
            _fail("--time needs a time zone (e.g. a trailing Z for UTC)", EXIT_USAGE)
    if assessment_id is None:
        if when is None:
            _fail("counts per state need --time", EXIT_USAGE)
        assert when is not None
        counts = _run(counts_at(Settings(), when))
        if as_json:
            out.print_json(data={k.value: v for k, v in counts.items()})
        else:
            out.print(", ".join(f"{k.value}={v}" for k, v in counts.items()))
        return
    state = _run(state_at(Settings(), assessment_id, at=when, offset=offset))
    if state is None:
        _fail(f"assessment {assessment_id!r} did not exist at that point", EXIT_REFUSED)
    assert state is not None
    show_assessment(state, as_json)


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Default: ASSESSMENT_STORE_API_HOST (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Default: ASSESSMENT_STORE_API_PORT (8080).")] = None,
) -> None:
    """Serve the HTTP API (OpenAPI at /docs and /openapi.json). Writes need ASSESSMENT_STORE_API_TOKEN; reads
    need it or ASSESSMENT_STORE_API_READ_TOKEN."""
    import uvicorn

    from assessment_store.api import create_app

    settings = Settings()
    if settings.api_token is None:
        err.print("[yellow]ASSESSMENT_STORE_API_TOKEN is not set: write endpoints will answer 403.[/]")
        if settings.api_read_token is None:
            err.print("[yellow]ASSESSMENT_STORE_API_READ_TOKEN is not set either: data reads will answer 403 "
                      "(/healthz stays open).[/]")
    uvicorn.run(create_app(settings), host=host or settings.api_host, port=port or settings.api_port,
                log_level="info", proxy_headers=False)


