"""Validation benchmark: ``migrate validate`` against reading both sides once, in the same run.

    .venv/bin/python -m bench.validate [--count 1000000] [--buckets 4096] [--port-base 24292]

Starts a private stack (data in .data/bench-validate, ports --port-base..+2) and the Node sample legacy
service. Loads ``--count`` assessments into both sides: legacy through its snapshot endpoint (POST
/snapshot, JSON Lines), the store's projection table directly with COPY (this measures the validator,
not the write path), then plants a few differences (corrupted, lost, extra). Measures:

* baseline: reading both sides once, concurrently (legacy GET /export, every line parsed; every
  projection row fetched and decoded) - what a naive row-by-row validator would at least cost;
* validate, cold (the legacy service hashes every record on its first checksum request) and warm.

Prints seconds and the ratios validate / baseline (targets: <= 60 s, <= 3x). The store's histories
are not loaded by COPY, so the history checks are off here (``histories=False``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from assessment_store import Settings
from assessment_store.migration import start_legacy_http, validate_after
from assessment_store.projections import connect, migrate
from assessment_store.stack import Stack
from assessment_store.testing import isolated_settings, running_stack

ROOT = Path(__file__).resolve().parent.parent
console = Console()
T0 = datetime(2024, 5, 1, tzinfo=UTC)
STATES = ("pending", "processing", "completed", "failed", "cancelled")


def record(i: int) -> dict[str, Any]:
    status = STATES[i % 5]
    created = T0 + timedelta(seconds=i)
    updated = created + timedelta(milliseconds=1500 + i % 1000)
    return {
        "assessmentId": f"bench-{i:07d}", "status": status, "progress": 100 if status == "completed" else i % 100,
        "message": None if i % 3 == 0 else f"step {i % 7}", "request": {"subject": f"s-{i}", "tags": ["a", "b"], "n": i},
        "result": {"score": i % 10, "ratio": (i % 7 + 1) / 8} if status == "completed" else None,
        "error": "boom" if status == "failed" else None,
        "timestamp": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "updatedAt": updated.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "duration": 1500 + i % 1000 if status in ("completed", "failed", "cancelled") else None,
    }


def row(r: dict[str, Any]) -> tuple[Any, ...]:
    """The projection row of a legacy record, in COPY column order."""
    state = r["status"].upper()
    created = datetime.fromisoformat(r["timestamp"])
    updated = datetime.fromisoformat(r["updatedAt"])
    return (r["assessmentId"], state, 1, r["progress"], r["message"],
            json.dumps(r["request"]), json.dumps(r["result"]) if r["result"] is not None else None, r["error"],
            r["duration"] if state in ("COMPLETED", "FAILED") else None, created, updated, uuid.uuid4())


async def load(settings: Settings, url: str, count: int) -> None:
    async def lines() -> AsyncIterator[bytes]:
        for start in range(0, count, 10_000):
            yield "".join(json.dumps(record(i)) + "\n" for i in range(start, min(count, start + 10_000))).encode()

    async with httpx.AsyncClient(timeout=600) as client:
        answer = await client.post(f"{url}/snapshot", content=lines())
        console.print(f"legacy: {answer.json()}")
    conn = await connect(settings)
    try:
        await migrate(conn)
        await conn.execute("TRUNCATE projection.assessments")
        # COPY is binary and the pool's jsonb codec is text: stage the documents as text, cast on insert.
        await conn.execute("CREATE TEMP TABLE staged (assessment_id text, state text, version bigint, progress smallint,"
                           " message text, request_data text, result_data text, error_message text, duration_ms bigint,"
                           " created_at timestamptz, updated_at timestamptz, last_event_id uuid)")

        async def copy(rows: list[tuple[Any, ...]]) -> None:
            await conn.copy_records_to_table("staged", records=rows)
            await conn.execute(
                "INSERT INTO projection.assessments (assessment_id, state, version, progress, message, request_data,"
                " result_data, error_message, duration_ms, created_at, updated_at, last_event_id)"
                " SELECT assessment_id, state, version, progress, message, request_data::jsonb, result_data::jsonb,"
                " error_message, duration_ms, created_at, updated_at, last_event_id FROM staged")
            await conn.execute("TRUNCATE staged")

        for start in range(0, count, 100_000):
            await copy([row(record(i)) for i in range(start, min(count, start + 100_000))])
        # Planted: 10 corrupted, 5 lost (store lacks them), 3 extra (only the store has them).
        await conn.execute("UPDATE projection.assessments SET progress = (progress + 1) % 100"
                           " WHERE assessment_id = ANY($1::text[])", [f"bench-{i:07d}" for i in range(1, count, count // 10)])
        await conn.execute("DELETE FROM projection.assessments WHERE assessment_id = ANY($1::text[])",
                           [f"bench-{i:07d}" for i in range(2, count, count // 5)])
        await copy([row({**record(i), "assessmentId": f"bench-extra-{i}"}) for i in range(3)])
        await conn.execute("ANALYZE projection.assessments")
    finally:
        await conn.close()


async def read_both_once(settings: Settings, url: str) -> tuple[int, int]:
    async def legacy() -> int:
        n = 0
        async with httpx.AsyncClient(timeout=600) as client, client.stream("GET", f"{url}/export") as response:
            async for line in response.aiter_lines():
                if line:
                    json.loads(line)
                    n += 1
        return n

    async def store() -> int:
        conn = await connect(settings)
        try:
            n = 0
            async with conn.transaction():
                async for _r in conn.cursor("SELECT * FROM projection.assessments", prefetch=10_000):
                    n += 1
            return n
        finally:
            await conn.close()

    a, b = await asyncio.gather(legacy(), store())
    return a, b


async def bench(settings: Settings, count: int, buckets: int) -> None:
    legacy = await start_legacy_http(settings, group="bench-validate-legacy", emitter_id="bench-validate",
                                     stderr_path=ROOT / ".data" / "bench-validate" / "legacy-http.stderr")
    try:
        t = time.perf_counter()
        await load(settings, legacy.url, count)
        console.print(f"loaded {count} assessments into both sides in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        cold = await validate_after(settings, legacy.url, buckets=buckets, histories=False)
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        counts = await read_both_once(settings, legacy.url)
        baseline_s = time.perf_counter() - t
        t = time.perf_counter()
        warm = await validate_after(settings, legacy.url, buckets=buckets, histories=False)
        warm_s = time.perf_counter() - t
    finally:
        await legacy.stop()
    table = Table(title=f"migrate validate, {count} assessments, {buckets} buckets")
    for name in ("run", "seconds", "x baseline", "notes"):
        table.add_column(name)
    table.add_row("read both sides once", f"{baseline_s:.1f}", "1.00", f"legacy {counts[0]}, store {counts[1]} rows")
    for name, seconds, report in (("validate (cold)", cold_s, cold), ("validate (warm)", warm_s, warm)):
        table.add_row(name, f"{seconds:.1f}", f"{seconds / baseline_s:.2f}",
                      f"{report.buckets_differing} buckets differ, {report.rows_fetched} rows fetched; "
                      + ", ".join(f"{k.value} {v}" for k, v in report.totals.items() if v)
                      + "; " + ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items()))
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--buckets", type=int, default=4096)
    parser.add_argument("--port-base", type=int, default=24292)
    args = parser.parse_args()
    settings = isolated_settings(ROOT / ".data" / "bench-validate", port_base=args.port_base)
    Stack(settings).purge(log=lambda _m: None)
    with running_stack(settings) as s:
        asyncio.run(bench(s, args.count, args.buckets))


if __name__ == "__main__":
    main()
