"""``assessment-store flags ...``: show, change, audit and roll back the migration flags."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from assessment_store.core import BackendError, Settings
from ._console import EXIT_USAGE, err, fail, out, run_cli
from ._options import Actor, JsonFlag

from assessment_store.migration import (
    FlagStore,
    MigrationFlags,
    ReverseSyncStatus,
    audit_trail,
    default_actor,
    reverse_sync_status,
)

__all__ = ["flags_app"]

flags_app = typer.Typer(help="Migration flags (a compacted topic; every change is audited).", no_args_is_help=True)



def _value(text: str) -> Any:
    """KEY=VALUE values are JSON literals (true, 25, "salt"); anything else is taken as a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def store_share(flags: MigrationFlags) -> float:
    """The percentage of assessments the flags route to the store."""
    if not flags.enable_assessment_store:
        return 0.0
    return flags.migration_percentage if flags.enable_dual_mode else 100.0


def _report_reverse_sync(status: ReverseSyncStatus | str | None) -> None:
    # On stderr: stdout stays the flags alone (`--json` output is parsed by scripts).
    if isinstance(status, str):
        err.print(f"[yellow]reverse sync status unknown: {status}[/]", highlight=False)
    elif status is not None:
        err.print(("[yellow]" if status.members == 0 else "") + status.describe(), highlight=False)


async def _status(settings: Settings) -> ReverseSyncStatus | str:
    """The reverse sync's status, or why it could not be read: a diagnostic must not fail the command
    (on a brand-new broker the group coordinator does not exist until a group first commits)."""
    try:
        return await reverse_sync_status(settings)
    except BackendError as e:
        return str(e)


async def _update(changes: dict[str, Any], actor: str | None) -> tuple[MigrationFlags, ReverseSyncStatus | str | None]:
    """Apply the change; when it moves assessments from the store to legacy, also say whether the
    reverse sync is there to bring legacy up to date (sync before serve waits for it)."""
    settings = Settings()
    async with FlagStore(settings) as store:
        before = store.current()
        after = await store.update(actor or default_actor(), **changes)
    status = await _status(settings) if store_share(after) < store_share(before) else None
    return after, status


def _print_flags(flags: MigrationFlags, as_json: bool) -> None:

    if as_json:
        out.print_json(data=flags.to_json())
    else:
        for k, v in flags.to_json().items():
            out.print(f"{k} = {json.dumps(v)}")


@flags_app.command("show")
def show(as_json: JsonFlag = False) -> None:
    """The current flags, as every running instance sees them."""

    async def go() -> tuple[MigrationFlags, ReverseSyncStatus | str]:
        settings = Settings()
        async with FlagStore(settings) as store:
            return store.current(), await _status(settings)

    flags, status = run_cli(go())
    _print_flags(flags, as_json)
    _report_reverse_sync(status)


@flags_app.command("set")
def set_(
    assignments: Annotated[list[str], typer.Argument(help="KEY=VALUE, e.g. migrationPercentage=25 enableDualMode=true")],
    actor: Actor = None,
    as_json: JsonFlag = False,
) -> None:
    """Change flags; running instances see the change within about a second."""

    changes: dict[str, Any] = {}
    for a in assignments:
        key, sep, raw = a.partition("=")
        if not sep or not key:
            fail(f"{a!r} is not KEY=VALUE", EXIT_USAGE)
        changes[key] = _value(raw)

    flags, status = run_cli(_update(changes, actor))
    _print_flags(flags, as_json)
    _report_reverse_sync(status)


@flags_app.command("rollback")
def rollback(actor: Actor = None, as_json: JsonFlag = False) -> None:
    """Immediate rollback: every call goes to the legacy system (store and dual mode off)."""

    flags, status = run_cli(_update({"enable_assessment_store": False, "enable_dual_mode": False}, actor))
    _print_flags(flags, as_json)
    _report_reverse_sync(status)


@flags_app.command("history")
def history(
    audit: Annotated[bool, typer.Option("--audit", help="The durable audit rows instead of the topic.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Flag changes, oldest first: from the topic, or (--audit) from public.migration_audit."""

    async def go() -> list[dict[str, Any]]:
        if audit:
            return await audit_trail(Settings())
        async with FlagStore(Settings()) as store:
            return [c.to_json() for c in await store.history()]

    rows = run_cli(go())
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    for r in rows:
        out.print(json.dumps(r, default=str))
