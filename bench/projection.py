"""Projection benchmark: fold throughput and a full rebuild, against a raw COPY baseline.

    .venv/bin/python -m bench.projection [--events 1000000] [--copy-events 200000]

Starts a private Kafka + PostgreSQL (data in .data/bench-projection-<port base>, ports 29692-29694 unless
``--port-base`` moves them), appends
``--events`` events (complete lifecycles of 4 events) to the events topic, then measures in one run:

1. the rebuild: ``assessment-store replay --dry-run --restart --force`` in a child process folds
   the whole log from offset 0 (the same fold code the live projector runs): wall time, events/s,
   and the child's resident memory sampled through the run (peak, and peak per quarter of the
   run, to show whether it grows with the log);
2. the baseline: asyncpg ``copy_records_to_table`` of the equivalent rows (one history row per
   event plus one state row per assessment) into scratch tables - the fastest way to put the same
   data into PostgreSQL from Python, with no decoding, folding or checks.

Goals (issue "Projections and replay"): fold >= 30,000 events/s and >= 40 % of raw COPY; the
1M-event rebuild in <= 60 s with peak RSS <= 300 MB, flat in the size of the log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

from assessment_store import Settings
from assessment_store.testing import isolated_settings, produce_lifecycles
from assessment_store.projections import connect
from assessment_store.stack import Stack, settings_env
from assessment_store.stack._procs import rss_bytes
from assessment_store.streams import ensure_topics

ROOT = Path(__file__).resolve().parent.parent
console = Console()


def rebuild_in_child(settings: Settings) -> tuple[float, int, list[int]]:
    """Run the replay CLI as a child; returns (seconds, peak RSS bytes, peak RSS per quarter)."""
    env = {**os.environ, **settings_env(settings)}
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "assessment_store.cli", "replay", "--dry-run", "--restart", "--force"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while child.poll() is None:
        rss = rss_bytes(child.pid)
        if rss:
            samples.append((time.monotonic() - t0, rss))
        time.sleep(0.1)  # sampling period of the memory probe
    elapsed = time.monotonic() - t0
    out = child.stdout.read() if child.stdout else ""
    if child.returncode != 0:
        raise RuntimeError(f"replay failed ({child.returncode}): {out[-2000:]}")
    quarters = [max((r for t, r in samples if q * elapsed / 4 <= t < (q + 1) * elapsed / 4), default=0)
                for q in range(4)]
    return elapsed, max(r for _, r in samples), quarters


async def copy_baseline(settings: Settings, events: int) -> float:
    """Rows/s of a raw COPY of ``events`` history rows plus their state rows."""
    now = datetime.now(UTC)
    history = []
    states = []
    for i in range(events // 4):
        aid = f"copy-{i}"
        for v, typ in enumerate(("AssessmentCreated", "AssessmentStarted", "ProgressUpdated", "AssessmentCompleted"), 1):
            history.append((aid, v, uuid.uuid4(), typ, now, now, "store", None, str(uuid.uuid4()),
                            json.dumps({"i": i}), "assessments.events", i % 6, i))
        states.append((aid, "COMPLETED", 4, 100, "half", json.dumps({"i": i}), json.dumps({"ok": i}), None, None, 0,
                       None, None, 10, None, now, now + timedelta(seconds=1), now, now, uuid.uuid4()))
    conn = await connect(settings)
    # COPY is binary: jsonb's binary form is a version byte then the JSON text.
    await conn.set_type_codec("jsonb", schema="pg_catalog", format="binary",
                              encoder=lambda v: b"\x01" + v.encode(), decoder=lambda b: b[1:].decode())
    try:
        await conn.execute("DROP TABLE IF EXISTS bench_copy_events, bench_copy_states")
        await conn.execute("CREATE TABLE bench_copy_events (LIKE projection.assessment_events INCLUDING ALL)")
        await conn.execute("CREATE TABLE bench_copy_states (LIKE projection.assessments INCLUDING ALL)")
        t0 = time.perf_counter()
        await conn.copy_records_to_table("bench_copy_events", records=history)
        await conn.copy_records_to_table("bench_copy_states", records=states)
        elapsed = time.perf_counter() - t0
        await conn.execute("DROP TABLE bench_copy_events, bench_copy_states")
    finally:
        await conn.close()
    return events / elapsed


def main(args: argparse.Namespace) -> None:
    settings = isolated_settings(ROOT / ".data" / f"bench-projection-{args.port_base}", port_base=args.port_base)
    stack = Stack(settings)
    stack.purge(log=lambda _m: None)
    stack.up(["kafka", "postgres"], log=lambda _m: None)
    try:
        async def prepare() -> tuple[int, float]:
            await ensure_topics(settings)
            t0 = time.monotonic()
            n = await produce_lifecycles(settings, args.events // 4, prefix="bench")
            return n, time.monotonic() - t0

        n, produced_s = asyncio.run(prepare())
        console.print(f"appended {n:,} events in {produced_s:.1f} s")
        rebuild_s, peak, quarters = rebuild_in_child(settings)
        copy_rate = asyncio.run(copy_baseline(settings, args.copy_events))
    finally:
        stack.down(log=lambda _m: None)

    fold_rate = n / rebuild_s
    mb = 2**20
    t = Table(title="projection fold and rebuild (one run, this machine)")
    for col in ("measure", "value", "goal"):
        t.add_column(col)
    t.add_row(f"rebuild of {n:,} events (replay --dry-run, child process)", f"{rebuild_s:.1f} s", "<= 60 s for 1M")
    t.add_row("fold throughput", f"{fold_rate:,.0f} events/s", ">= 30,000 events/s")
    t.add_row("peak RSS of the rebuild", f"{peak / mb:.0f} MB", "<= 300 MB")
    t.add_row("peak RSS per quarter of the run", " / ".join(f"{q / mb:.0f}" for q in quarters) + " MB", "flat")
    t.add_row(f"baseline: raw asyncpg COPY of the equivalent rows ({args.copy_events:,} events)",
              f"{copy_rate:,.0f} events/s", "")
    t.add_row("fold / COPY", f"{fold_rate / copy_rate:.0%}", ">= 40 %")
    console.print(t)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--copy-events", type=int, default=200_000)
    parser.add_argument("--port-base", type=int, default=29692, help="Kafka, controller and PostgreSQL ports: base..base+2.")
    main(parser.parse_args())
