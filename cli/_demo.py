"""The README's demo: several assessments driven concurrently through their lifecycle."""

from __future__ import annotations

import asyncio
import json
import time

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from typing import TYPE_CHECKING

from assessment_store.core import Settings, State

from ._console import EXIT_REFUSED, err, out
from ._console import run_cli as _run
from ._root import app

if TYPE_CHECKING:  # imported where used: every command line loads this module (see cli/__init__.py)
    from assessment_store.client import AssessmentStore

__all__ = ["run_demo"]


async def _drive(store: AssessmentStore, i: int) -> str:
    aid = await store.create_assessment({"subject": f"demo-{i}", "checks": ["identity", "credit"]})
    await store.start_assessment(aid, worker="demo")
    for pct in (25, 50, 75):
        await store.update_progress(aid, pct, f"step {pct // 25} of 4")
    match i % 4:
        case 3:
            await store.fail_assessment(aid, "credit bureau timed out", retryable=True)
        case 2:
            await store.cancel_assessment(aid, "requested by the demo")
        case _:
            await store.complete_assessment(aid, {"score": 600 + 17 * i, "decision": "approve" if i % 2 else "review"})
    return aid


async def run_demo(settings: Settings, count: int, out: Console) -> None:
    t0 = time.monotonic()
    from assessment_store.client import AssessmentStore

    async with AssessmentStore(settings) as store:
        ids = await asyncio.gather(*(_drive(store, i) for i in range(count)))
        finals = [await store.wait_for_completion(aid, timeout=30) for aid in ids]
        counts = await store.count_by_state()
    elapsed = time.monotonic() - t0
    t = Table(title=f"{count} assessments, final state read from PostgreSQL ({elapsed:.2f} s)")
    for col in ("assessment id", "state", "version", "progress", "duration ms", "result / error"):
        t.add_column(col)
    colour = {State.COMPLETED: "green", State.FAILED: "red", State.CANCELLED: "yellow"}
    for a in finals:
        detail = json.dumps(a.result_data) if a.state is State.COMPLETED else a.error_message or a.cancel_reason
        t.add_row(a.assessment_id, f"[{colour.get(a.state, 'white')}]{a.state.value}[/]", str(a.version),
                  str(a.progress), str(a.duration if a.duration is not None else "-"), str(detail))
    out.print(t)
    out.print("store totals: " + ", ".join(f"{k.value}={v}" for k, v in counts.items()))


@app.command("demo")
def demo(
    count: Annotated[int, typer.Option(min=1, max=1000, help="How many assessments.")] = 6,
    migration: Annotated[bool, typer.Option(
        help="Then the migration: the Node legacy service and the store in dual mode at 30 %, with shadows.")] = True,
    migration_count: Annotated[int, typer.Option(min=1, max=1000, help="Assessments through the router.")] = 20,
) -> None:
    """Drive a few assessments through their lifecycle, then a dual-mode migration run; print both results."""
    settings = Settings()
    _run(run_demo(settings, count, out))
    if migration:
        from ._migration_demo import run_migration_demo

        if not _run(run_migration_demo(settings, migration_count, out)):
            err.print("[red]the migration demo's checks did not all hold (see above)[/]")
            raise typer.Exit(EXIT_REFUSED)
    from assessment_store.monitoring import demo_summary

    _run(demo_summary(settings, out))  # the demo's own groups' lag, and where the dashboard is


