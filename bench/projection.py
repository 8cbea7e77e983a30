"""Projection benchmark: fold throughput and a full rebuild, against a raw COPY baseline.

    .venv/bin/python -m bench.projection [--events 1000000] [--copy-events 200000] [--batch-size N]
        [--reuse] [--profile FILE]

Starts a private Kafka + PostgreSQL (data in .data/bench-projection-<port base>, ports 29692-29694 unless
``--port-base`` moves them), appends
``--events`` events (complete lifecycles of 4 events) to the events topic, then measures in one run:

1. the rebuild: ``assessment-store replay --dry-run --restart --force`` in a child process folds
   the whole log from offset 0 (the same fold code the live projector runs): wall time, events/s,
   and the child's resident memory sampled through the run (peak, and peak per quarter of the
   run, to show whether it grows with the log);
2. the baseline: asyncpg ``copy_records_to_table`` of the equivalent rows (one history row per
   event plus one state row per assessment) into scratch tables - the fastest way to put the same
   data into PostgreSQL from Python, with no decoding, folding or checks - in transactions of the
   projector's batch size (the baseline the goal compares with), and once as a single COPY.

Each figure comes with the CPU it cost, in microseconds per event, per process: the rebuild child
and its worker processes (``ASSESSMENT_STORE_REPLAY_WORKERS``; their rusage, read when reaped), PostgreSQL (postmaster and backends, bench/_cpu.py) and
Kafka; for the COPY baselines, this process and PostgreSQL. Those survive a shared machine better
than the rates do: the load average is printed beside them.

``--reuse`` keeps the data directory of an earlier run with at least ``--events`` events on the
topic (no purge, no appending: iterate on the fold without producing again). ``--profile FILE``
runs the rebuild child under cProfile and writes its stats to FILE.

Goals (issue "Projections and replay"): fold >= 30,000 events/s and >= 40 % of raw COPY at the same
batch size; the 1M-event rebuild in <= 35 s with peak RSS <= 300 MB, flat in the size of the log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
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

from ._cpu import CpuSnapshot

ROOT = Path(__file__).resolve().parent.parent
console = Console(width=150)


def rebuild_in_child(settings: Settings, profile: str | None = None) -> tuple[float, int, list[int], float]:
    """Run the replay CLI as a child; returns (seconds, peak RSS bytes, peak RSS per quarter, the
    child's CPU seconds), its worker processes included in both."""
    env = {**os.environ, **settings_env(settings)}
    samples: list[tuple[float, int]] = []
    # The child's CPU is its rusage, counted once it is reaped: no other child of ours ends meanwhile.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    prof = ["-m", "cProfile", "-o", profile] if profile else []
    # stderr to a file, not a pipe: nothing reads it while the child runs, and a full pipe would
    # stall it; its tail is the reason shown when the replay fails.
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen([sys.executable, *prof, "-m", "assessment_store.cli", "replay", "--dry-run",
                                  "--restart", "--force"], env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
        while child.poll() is None:
            rss = _tree_rss(child.pid)
            if rss:
                samples.append((time.monotonic() - t0, rss))
            time.sleep(0.1)  # sampling period of the memory probe
        elapsed = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        out = child.stdout.read() if child.stdout else ""
        errors.seek(0)
        stderr = errors.read()
    if child.returncode != 0:
        raise RuntimeError(f"replay failed ({child.returncode}): {out[-1000:]}{stderr[-3000:]}")
    quarters = [max((r for t, r in samples if q * elapsed / 4 <= t < (q + 1) * elapsed / 4), default=0)
                for q in range(4)]
    return elapsed, max(r for _, r in samples), quarters, cpu


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (the replay's worker processes)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss_bytes(p) or 0
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            continue  # ended meanwhile
    return total


async def copy_baseline(settings: Settings, events: int, batch: int) -> float:
    """Events/s of a raw COPY of ``events`` history rows plus their state rows, ``batch`` events
    (and their state rows) per transaction; one COPY of each table when ``batch`` is 0."""
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
        step = batch or len(history)
        t0 = time.perf_counter()
        for i in range(0, len(history), step):
            async with conn.transaction():
                await conn.copy_records_to_table("bench_copy_events", records=history[i:i + step])
                await conn.copy_records_to_table("bench_copy_states", records=states[i // 4:(i + step) // 4])
        elapsed = time.perf_counter() - t0
        await conn.execute("DROP TABLE bench_copy_events, bench_copy_states")
    finally:
        await conn.close()
    return events / elapsed


def _us(spent: dict[str, float], role: str, events: int) -> str:
    return f"{spent.get(role, 0.0) * 1e6 / events:,.1f}"


def main(args: argparse.Namespace) -> None:
    overrides = {"projector_batch_size": args.batch_size} if args.batch_size else {}
    settings = isolated_settings(ROOT / ".data" / f"bench-projection-{args.port_base}", port_base=args.port_base,
                                 **overrides)
    batch = settings.projector_batch_size
    stack = Stack(settings)
    if not args.reuse:
        stack.purge(log=lambda _m: None)
    stack.up(["kafka", "postgres"], log=lambda _m: None)
    marker = settings.data_dir / "bench-events"
    roles = ("kafka", "postgres")
    try:
        async def prepare() -> tuple[int, float]:
            await ensure_topics(settings)
            t0 = time.monotonic()
            if args.reuse and marker.exists() and (have := int(marker.read_text())) >= args.events:
                return have, 0.0
            n = await produce_lifecycles(settings, args.events // 4, prefix="bench")
            marker.write_text(str(n))  # deleted by the next purge, with the topic
            return n, time.monotonic() - t0

        n, produced_s = asyncio.run(prepare())
        console.print(f"appended {n:,} events in {produced_s:.1f} s" if produced_s else f"reused {n:,} events")
        load_before = os.getloadavg()
        cpu0 = CpuSnapshot.take(stack, roles)
        rebuild_s, peak, quarters, child_cpu = rebuild_in_child(settings, args.profile)
        rebuild_cpu = CpuSnapshot.take(stack, roles).minus(cpu0)
        rebuild_cpu["rebuild child"] = child_cpu
        load_after = os.getloadavg()
        copy_cpu: dict[int, dict[str, float]] = {}
        copy_rate: dict[int, float] = {}
        for b in (batch, 0):
            cpu0 = CpuSnapshot.take(stack, roles)
            copy_rate[b] = asyncio.run(copy_baseline(settings, args.copy_events, b))
            copy_cpu[b] = CpuSnapshot.take(stack, roles).minus(cpu0)
    finally:
        stack.down(log=lambda _m: None)

    fold_rate = n / rebuild_s
    mb = 2**20
    t = Table(title=f"projection fold and rebuild (one run, this machine; batch size {batch:,})")
    for col in ("measure", "value", "goal"):
        t.add_column(col)
    t.add_row(f"rebuild of {n:,} events (replay --dry-run, child process)", f"{rebuild_s:.1f} s", "<= 35 s for 1M")
    t.add_row("fold throughput", f"{fold_rate:,.0f} events/s", ">= 30,000 events/s")
    t.add_row("  CPU µs per event: rebuild processes / PostgreSQL / Kafka",
              " / ".join(_us(rebuild_cpu, r, n) for r in ("rebuild child", "postgres", "kafka")), "")
    t.add_row("peak RSS of the rebuild (its processes together)", f"{peak / mb:.0f} MB", "<= 300 MB")
    t.add_row("peak RSS per quarter of the run", " / ".join(f"{q / mb:.0f}" for q in quarters) + " MB", "flat")
    for b, label in ((batch, f"{batch:,} events per transaction"), (0, "one COPY per table")):
        t.add_row(f"baseline: raw asyncpg COPY of the equivalent rows ({args.copy_events:,} events, {label})",
                  f"{copy_rate[b]:,.0f} events/s", "")
        t.add_row("  CPU µs per event: bench process / PostgreSQL",
                  " / ".join(_us(copy_cpu[b], r, args.copy_events) for r in ("this process", "postgres")), "")
    t.add_row("fold / COPY at the same batch size", f"{fold_rate / copy_rate[batch]:.0%}", ">= 40 %")
    t.add_row("fold / one COPY per table", f"{fold_rate / copy_rate[0]:.0%}", "")
    t.add_row("load average (1 min) before / after the rebuild", f"{load_before[0]:.2f} / {load_after[0]:.2f}", "")
    console.print(t)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--copy-events", type=int, default=200_000)
    parser.add_argument("--port-base", type=int, default=29692, help="Kafka, controller and PostgreSQL ports: base..base+2.")
    parser.add_argument("--batch-size", type=int, default=0, help="projector_batch_size (default: the setting's)")
    parser.add_argument("--reuse", action="store_true", help="keep an earlier run's data and events (see above)")
    parser.add_argument("--profile", help="run the rebuild child under cProfile, stats to this file")
    main(parser.parse_args())
