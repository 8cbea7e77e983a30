"""``assessment-store bridge ...``: run the legacy bridge, import a legacy export, inspect refusals.

The main CLI mounts ``bridge_app`` (``app.add_typer(bridge_app, name="bridge")``); the helpers every
CLI shares (consoles, exit codes per error, the foreground service loop) come from
``assessment_store._console``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from assessment_store.core import Settings
from ._console import out, run_cli, serve_forever
from ._options import AssessmentFilter, JsonFlag, PidFile

from assessment_store.bridge import BridgeOptions, BridgeStats, LegacyBridge

__all__ = ["bridge_app"]

bridge_app = typer.Typer(
    help="The legacy bridge: legacy EventEmitter messages and exports into the store's log.",
    no_args_is_help=True,
)

_DEFAULTS = BridgeOptions()


@bridge_app.command("run")
def run(
    pid_file: PidFile = None,
    group: Annotated[str, typer.Option(help="Consumer group of the legacy topic.")] = _DEFAULTS.group_id,
    max_message_bytes: Annotated[
        int, typer.Option(min=1024, help="Larger legacy records are dead-lettered unread.")
    ] = _DEFAULTS.max_message_bytes,
) -> None:
    """Consume legacy.assessment-events into store commands in the foreground until SIGTERM."""

    options = BridgeOptions(group_id=group, max_message_bytes=max_message_bytes)
    stats = BridgeStats()
    serve_forever(pid_file, "bridge", lambda settings: LegacyBridge(settings, options, stats=stats), stats)


@bridge_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="JSON Lines legacy export.")],
    batch_size: Annotated[int, typer.Option(min=1, max=100_000, help="Lines per batch and checkpoint.")] = 1000,
    restart: Annotated[bool, typer.Option(help="Ignore the checkpoint and import from line 1.")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Replace an existing, non-empty FILE.rejected.jsonl when the import starts from line 1.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    outcome_timeout: Annotated[float | None, typer.Option(
        min=0.1, help="Seconds a batch may wait without any outcome (default: command_timeout_s).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Import a legacy export (one assessment per line); resumable, idempotent, bad lines kept aside."""

    from assessment_store.bridge import import_legacy

    r = run_cli(import_legacy(Settings(), file, batch_size=batch_size, progress=progress, restart=restart,
                           overwrite=overwrite, outcome_timeout_s=outcome_timeout))
    if as_json:
        out.print_json(data={
            "file": str(r.path), "sha256": r.sha256, "totalLines": r.total_lines, "firstLine": r.first_line,
            "linesDone": r.lines_done, "alreadyDone": r.already_done, "imported": r.imported,
            "upToDate": r.up_to_date, "storeAhead": r.store_ahead, "blank": r.blank, "rejected": r.rejected,
            "rejectedByKind": r.rejected_by_kind, "rejectedFile": str(r.rejected_file),
            "badLines": [{"line": b.line, "kind": b.kind, "reason": b.reason} for b in r.bad_lines],
            "commandsSent": r.commands_sent, "accepted": r.accepted, "refused": r.refused,
            "batches": r.batches, "elapsedS": round(r.elapsed_s, 3), "linesPerS": round(r.lines_per_s, 1),
        })
        return
    if r.already_done:
        out.print(f"{r.path} (sha256 {r.sha256[:12]}…) was imported already; --restart imports it again "
                  "(it then finds everything up to date).")
    t = Table(title=f"legacy import of {r.path}", show_header=False)
    for k, v in (
        ("lines", f"{r.lines_done:,} of {r.total_lines:,}" + ("" if r.already_done else
                  f" (this run from line {r.first_line:,}, {r.lines_per_s:,.0f} lines/s)")),
        ("imported", f"{r.imported:,}"), ("already up to date", f"{r.up_to_date:,}"),
        ("further along in the store", f"{r.store_ahead:,}"), ("blank lines", f"{r.blank:,}"),
        ("rejected lines", f"{r.rejected:,} {r.rejected_by_kind or ''}"),
        ("commands", f"{r.commands_sent:,} sent, {r.accepted:,} accepted, {r.refused:,} refused by the store"),
    ):
        t.add_row(k, v)
    out.print(t)
    for b in r.bad_lines[:20]:
        out.print(f"  line {b.line}: [{b.kind}] {b.reason}", highlight=False)
    if r.rejected:
        out.print(f"every rejected line, with its reason: {r.rejected_file}")
    if r.refused:
        out.print("refused commands: assessment-store bridge rejections")


@bridge_app.command("dlq")
def dlq(
    limit: Annotated[int, typer.Option(min=1, help="How many of the latest dead letters.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """Legacy messages the bridge could not translate, with their reasons (legacy.assessment-events.dlq)."""

    from assessment_store.bridge import dead_letters

    letters = run_cli(dead_letters(Settings(), limit=limit))
    if as_json:
        out.print_json(data=[{"offset": d.offset, "kind": d.kind, "reason": d.reason, "source": d.source,
                              "letter": d.wrapper} for d in letters])
        return
    t = Table(title=f"dead letters ({len(letters)})")
    for col in ("offset", "kind", "reason", "legacy record", "payload"):
        t.add_column(col)
    for d in letters:
        payload = d.wrapper.get("payload") or ("(base64) " + str(d.wrapper.get("payloadBase64", "")))
        t.add_row(str(d.offset), d.kind, d.reason, d.source, str(payload)[:80])
    out.print(t)


@bridge_app.command("rejections")
def rejections(
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 100,
    assessment_id: AssessmentFilter = None,
    as_json: JsonFlag = False,
) -> None:
    """Bridge and import commands the command processor refused (e.g. progress after completion)."""

    from assessment_store.bridge import bridge_rejections

    rows = run_cli(bridge_rejections(Settings(), limit=limit, assessment_id=assessment_id))
    if as_json:
        out.print_json(json.dumps([{
            "commandId": r.command_id, "assessmentId": r.assessment_id, "origin": r.origin,
            "errorType": r.error_type, "errorMessage": r.error_message, "errorDetails": r.error_details,
            "processedAt": r.processed_at.isoformat(),
        } for r in rows]))
        return
    t = Table(title=f"refused bridge commands ({len(rows)})")
    for col in ("processed at", "origin", "assessment", "command", "error"):
        t.add_column(col)
    for r in rows:
        t.add_row(r.processed_at.isoformat(timespec="seconds"), r.origin, r.assessment_id, r.command_id,
                  f"{r.error_type}: {r.error_message}")
    out.print(t)


@bridge_app.command("reverse-sync")
def reverse_sync(
    pid_file: PidFile = None,
    group: Annotated[str | None, typer.Option(help="Consumer group of the events topic "
                                                   "(default: settings reverse_sync_group).")] = None,
) -> None:
    """Re-emit every change written through the store in the legacy format (<legacy topic>.reverse) until SIGTERM."""

    from assessment_store.migration import ReverseStats, ReverseSync

    stats = ReverseStats()
    serve_forever(pid_file, "reverse-sync", lambda settings: ReverseSync(settings, group_id=group, stats=stats),
                  stats)


@bridge_app.command("shadow")
def shadow(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many, newest first.")] = 20,
    assessment_id: AssessmentFilter = None,
    as_json: JsonFlag = False,
) -> None:
    """What shadow comparison found: calls whose outcome differed on the other side, with both values."""

    from assessment_store.migration import MismatchLog

    async def read() -> tuple[dict[str, int], list[dict[str, Any]]]:
        async with MismatchLog(Settings()) as log:
            return await log.counts(), await log.latest(limit=limit, assessment_id=assessment_id)

    counts, rows = run_cli(read())
    if as_json:
        out.print_json(data={"counts": counts, "mismatches": rows})
        return
    total = sum(counts.values())
    t = Table(title=f"shadow mismatches: {total:,} kept " + (str(counts) if counts else "") + f", latest {len(rows)}")
    for col in ("observed at", "kind", "call", "assessment", "served by", "differs in", "served", "shadow"):
        t.add_column(col)

    def brief(v: dict[str, Any] | None, fields: list[str]) -> str:
        if v is None:
            return "(not found)"
        return ", ".join(f"{f}={json.dumps(v.get(f))}" for f in (fields or ["state", "progress"]))[:120]

    for r in rows:
        t.add_row(r["observedAt"][:23], r["kind"], r["operation"], r["assessmentId"], r["primarySide"],
                  ", ".join(r["differences"]) or "-", brief(r["primary"], r["differences"]),
                  brief(r["shadow"], r["differences"]))
    out.print(t)
    if not rows:
        out.print("no mismatches kept (shadow comparison: `assessment-store flags set enableShadowComparison=true`)")
