"""Id benchmark: PostgreSQL's CPU per command stored with random (version 4) or time-ordered
(version 7) ids.

    .venv/bin/python -m bench.ids [--rows 300000] [--rounds 2]

Starts a private PostgreSQL (data in .data/bench-ids-<port base>), and per round, for each id kind
in turn: creates two tables shaped like the projection's (an event table keyed by assessment and
version with a UNIQUE uuid event id; an outcome table keyed by a text command id), and COPYs
``--rows`` commands into them, 1,000 a transaction, each command one event row and one outcome row
over 2,000 assessments, with fresh ids of the kind for the event and the command. The figure is
the CPU the connection's backend spent (from /proc), per command: what the b-tree insertions of
each id kind cost. A third variant adds one NOTIFY per command (the projector's outcome
notifications) to price those too.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg
from rich.console import Console
from rich.table import Table

from assessment_store import Settings
from assessment_store.core import new_id
from assessment_store.projections import connect
from assessment_store.testing import isolated_settings

from ._cpu import process_cpu_s
from ._services import private_services

ROOT = Path(__file__).resolve().parent.parent
console = Console()


def _v4() -> str:
    return str(uuid.uuid4())


async def _one(conn: asyncpg.Connection, make: Callable[[], str], rows: int, notify: bool) -> tuple[float, float]:
    """(backend CPU µs per command, seconds) for ``rows`` commands with ids from ``make``."""
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    await conn.execute("DROP TABLE IF EXISTS bench_ids_events, bench_ids_outcomes")
    await conn.execute("CREATE TABLE bench_ids_events (assessment_id text, version bigint, event_id uuid NOT NULL "
                       "UNIQUE, payload text, PRIMARY KEY (assessment_id, version))")
    await conn.execute("CREATE TABLE bench_ids_outcomes (command_id text PRIMARY KEY, assessment_id text, "
                       "version bigint, event_id uuid)")
    versions: dict[str, int] = {}
    cpu0, t0 = process_cpu_s(pid), time.perf_counter()
    for b in range(rows // 1000):
        events, outcomes = [], []
        for i in range(1000):
            aid = f"a-{(b * 1000 + i) % 2000}"
            version = versions[aid] = versions.get(aid, 0) + 1
            event_id = uuid.UUID(make())
            events.append((aid, version, event_id, '{"progress": 5}'))
            outcomes.append((make(), aid, version, event_id))
        async with conn.transaction():
            await conn.copy_records_to_table("bench_ids_events", records=events)
            await conn.copy_records_to_table("bench_ids_outcomes", records=outcomes)
            if notify:
                await conn.execute("SELECT pg_notify('bench_ids', x) FROM unnest($1::text[]) AS x",
                                   [f"{o[0]}|{o[1]}|1|{o[2]}" for o in outcomes])
    spent = process_cpu_s(pid) - cpu0
    elapsed = time.perf_counter() - t0
    await conn.execute("DROP TABLE bench_ids_events, bench_ids_outcomes")
    return spent * 1e6 / (rows // 1000 * 1000), elapsed


async def measure(settings: Settings, args: argparse.Namespace) -> None:
    variants: list[tuple[str, Callable[[], str], bool]] = [
        ("version 4 (random)", _v4, False), ("version 7 (new_id)", new_id, False),
        ("version 7, a NOTIFY per command", new_id, True)]
    results: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    conn = await connect(settings)
    try:
        for r in range(args.rounds):
            for name, make, notify in variants:
                us, s = await _one(conn, make, args.rows, notify)
                results[name].append(us)
                console.print(f"round {r + 1}/{args.rounds}: {name}: {us:.1f} µs per command ({s:.1f} s)")
    finally:
        await conn.close()
    t = Table(title=f"PostgreSQL backend CPU per command (one event row + one outcome row), {args.rows:,} commands")
    for col in ("ids", "µs per command, each round", "ratio to version 4 (best rounds)"):
        t.add_column(col)
    base = min(results[variants[0][0]])
    for name, values in results.items():
        t.add_row(name, ", ".join(f"{v:.1f}" for v in values), f"{min(values) / base:.2f}")
    console.print(t)


def main(args: argparse.Namespace) -> None:
    settings = isolated_settings(ROOT / ".data" / f"bench-ids-{args.port_base}", port_base=args.port_base)
    with private_services(settings, ["postgres"]):
        asyncio.run(measure(settings, args))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port-base", type=int, default=29592)
    main(parser.parse_args())
