"""``assessment-store flags ...``: show, change, audit and roll back the migration flags."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from assessment_store._config import Settings
from assessment_store._console import fail, out, run_cli

from ._flags import FlagStore, MigrationFlags, audit_trail, default_actor

__all__ = ["flags_app"]

flags_app = typer.Typer(help="Migration flags (a compacted topic; every change is audited).", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Actor = Annotated[str | None, typer.Option(help="Who makes the change (default: user@host).")]


def _value(text: str) -> Any:
    """KEY=VALUE values are JSON literals (true, 25, "salt"); anything else is taken as a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _print_flags(flags: MigrationFlags, as_json: bool) -> None:

    if as_json:
        out.print_json(data=flags.to_json())
    else:
        for k, v in flags.to_json().items():
            out.print(f"{k} = {json.dumps(v)}")


@flags_app.command("show")
def show(as_json: JsonFlag = False) -> None:
    """The current flags, as every running instance sees them."""

    async def go() -> MigrationFlags:
        async with FlagStore(Settings()) as store:
            return store.current()

    _print_flags(run_cli(go()), as_json)


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
            fail(f"{a!r} is not KEY=VALUE")
        changes[key] = _value(raw)

    async def go() -> MigrationFlags:
        async with FlagStore(Settings()) as store:
            return await store.update(actor or default_actor(), **changes)

    _print_flags(run_cli(go()), as_json)


@flags_app.command("rollback")
def rollback(actor: Actor = None, as_json: JsonFlag = False) -> None:
    """Immediate rollback: every call goes to the legacy system (store and dual mode off)."""

    async def go() -> MigrationFlags:
        async with FlagStore(Settings()) as store:
            return await store.update(actor or default_actor(), enable_assessment_store=False, enable_dual_mode=False)

    _print_flags(run_cli(go()), as_json)


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
