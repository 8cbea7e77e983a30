"""Rebuild the projection from offset 0 of the log, verify it, and swap it in atomically.

Phases, and why each is safe while the live projection keeps serving:

1. *Fold.* A rebuild projector (no consumer group: it owns every partition) folds the events and
   outcomes topics from offset 0 into a sibling schema, ``projection_rebuild``, storing its offsets
   there under the live group's name. Interrupted, a second run resumes from those offsets. With
   ``replay_workers`` > 1 and enough to fold, spawned worker processes fold their share of the
   partition numbers side by side with this one (``_fold_bulk``): an assessment's events and
   outcomes share a partition number, so the shares are disjoint sets of assessments, as a live
   projector group's members' are.
2. *Catch up under the swap lock.* ``public.fold_batch`` takes a shared advisory lock per schema;
   the swap takes the live schema's lock exclusively, so the live projectors finish their batch in
   flight and then wait. With the live offsets frozen, the rebuild folds exactly up to them (never
   beyond): both schemas now reflect the same prefix of the log.
3. *Verify.* Same prefix, so the projection being a pure function of the log means the two must be
   equal: row counts, per-assessment versions (a full join), and an order-independent checksum over
   every column of every state row. A difference aborts the swap (``--force`` overrides) and leaves
   both schemas for inspection.
4. *Swap.* In the same transaction: the rebuild's generation is set past the live one, the live
   schema is renamed away (and dropped unless ``keep_old``), the rebuild is renamed to
   ``projection``. On commit the waiting live projectors proceed, find a generation they do not
   know (fold_batch raises AS001), reconnect, and resume from the swapped-in offsets (see
   ``Projector._after_swap``). Readers see the old rows until the commit and the new ones after.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.process
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from aiokafka import TopicPartition

from assessment_store.core import BackendError, DatabaseUnavailable, KafkaUnavailable, Settings, StoreUsageError

from ._audit import record_audit
from ._db import LIVE_SCHEMA, connect, create_projection_schema, migrate, translate_db_errors
from ._projector import Projector

__all__ = ["REBUILD_SCHEMA", "ReplayReport", "Verification", "replay", "verify_schemas"]

REBUILD_SCHEMA = "projection_rebuild"


@dataclass(frozen=True)
class Verification:
    live_assessments: int
    rebuilt_assessments: int
    live_events: int
    rebuilt_events: int
    live_outcomes: int
    rebuilt_outcomes: int
    version_mismatches: int
    live_checksum: str
    rebuilt_checksum: str

    @property
    def ok(self) -> bool:
        return (
            self.live_assessments == self.rebuilt_assessments
            and self.live_events == self.rebuilt_events
            and self.live_outcomes == self.rebuilt_outcomes
            and self.version_mismatches == 0
            and self.live_checksum == self.rebuilt_checksum
        )


@dataclass(frozen=True)
class ReplayReport:
    events_folded: int
    seconds: float
    resumed: bool
    verification: Verification
    swapped: bool
    dropped_old: str | None
    kept_old: str | None
    quarantined: int = 0
    """assessments the rebuild quarantined (PostgreSQL refused a value of one of their events;
    ``assessment-store quarantine list`` names them once swapped in)"""
    workers: int = 1
    """processes that folded phase 1 (``replay_workers``; 1 below ``replay_parallel_min_records``)"""


def _checksum_sql(schema: str) -> str:
    # Order-independent: the sum of a 60-bit slice of each row's md5, so no sort and no big string.
    return (f"SELECT coalesce(sum(('x' || substr(md5(a::text), 1, 15))::bit(60)::bigint), 0)::text"
            f" FROM {schema}.assessments a")


async def verify_schemas(conn: asyncpg.Connection, live: str, rebuilt: str) -> Verification:
    async def count(schema: str, table: str) -> int:
        return int(await conn.fetchval(f"SELECT count(*) FROM {schema}.{table}"))

    mismatches = await conn.fetchval(
        f"SELECT count(*) FROM {live}.assessments l FULL JOIN {rebuilt}.assessments r USING (assessment_id)"
        " WHERE l.version IS DISTINCT FROM r.version"
    )
    return Verification(
        await count(live, "assessments"), await count(rebuilt, "assessments"),
        await count(live, "assessment_events"), await count(rebuilt, "assessment_events"),
        await count(live, "command_outcomes"), await count(rebuilt, "command_outcomes"),
        int(mismatches), str(await conn.fetchval(_checksum_sql(live))), str(await conn.fetchval(_checksum_sql(rebuilt))),
    )


async def _schema_exists(conn: asyncpg.Connection, schema: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema))


async def replay(
    settings: Settings,
    *,
    dry_run: bool = False,
    restart: bool = False,
    keep_old: bool = False,
    force: bool = False,
    on_total: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Rebuild, verify and (unless ``dry_run``) swap; see the module docstring.

    ``on_total(total, done)`` is called once with the number of records to fold and those already
    folded by an interrupted earlier run; ``on_batch(n)`` after each folded batch.
    """
    t0 = time.monotonic()
    folded = 0

    def count(n: int) -> None:
        nonlocal folded
        folded += n
        if on_batch is not None:
            on_batch(n)

    conn = await connect(settings)
    try:
        resumed = await _prepare_rebuild_schema(conn, restart=restart)
        async with Projector(settings, schema=REBUILD_SCHEMA, assign_all=True) as rebuild:
            partitions, workers = await _fold_bulk(rebuild, settings, on_total, count)
            with translate_db_errors("verifying and swapping the rebuilt projection"):
                # Phases 2 to 4 are one transaction: the live projectors stay frozen from the catch-up
                # until the swap commits (or the transaction rolls back and they resume unchanged).
                async with conn.transaction():
                    await _catch_up_frozen(conn, rebuild, partitions, settings.projector_group, force, count)
                    verification, quarantined = await _verify(conn, force)
                    if dry_run:
                        return ReplayReport(events_folded=folded, seconds=time.monotonic() - t0, resumed=resumed,
                                            verification=verification, swapped=False, dropped_old=None,
                                            kept_old=None, quarantined=quarantined, workers=workers)
                    old = await _swap(conn, keep_old)
                    await record_audit(conn, "projection_rebuild_swap", "assessment-store replay",
                                       {"events_folded": folded, "kept_old": old if keep_old else None,
                                        "forced": force, "verification_ok": verification.ok})
        return ReplayReport(events_folded=folded, seconds=time.monotonic() - t0, resumed=resumed,
                            verification=verification, swapped=True, dropped_old=None if keep_old else old,
                            kept_old=old if keep_old else None, quarantined=quarantined, workers=workers)
    finally:
        await conn.close()


async def _prepare_rebuild_schema(conn: asyncpg.Connection, *, restart: bool) -> bool:
    """The rebuild schema, fresh or (unless ``restart``) as an interrupted run left it; True if resumed."""
    with translate_db_errors("preparing the rebuild schema"):
        await migrate(conn)
        if restart:
            await conn.execute(f"DROP SCHEMA IF EXISTS {REBUILD_SCHEMA} CASCADE")
        resumed = await _schema_exists(conn, REBUILD_SCHEMA)
        if not resumed:
            async with conn.transaction():
                await create_projection_schema(conn, REBUILD_SCHEMA)
    return resumed


async def _fold_bulk(
    rebuild: Projector, settings: Settings, on_total: Callable[[int, int], None] | None, count: Callable[[int], None]
) -> tuple[list[TopicPartition], int]:
    """Phase 1: fold up to today's end offsets while the live projection serves and advances; with
    ``replay_workers`` > 1 and enough left to fold, worker processes fold their share of the
    partitions side by side with this one (``_fold_alongside``)."""
    consumer = rebuild._consumer
    assert consumer is not None
    partitions = sorted(consumer.assignment())
    ends = await consumer.end_offsets(partitions)
    starts = {tp: await consumer.position(tp) for tp in partitions}
    if on_total is not None:
        on_total(sum(ends.values()), sum(starts.values()))
    numbers = sorted({tp.partition for tp in partitions})
    left = sum(ends.values()) - sum(starts.values())
    workers = min(settings.replay_workers, len(numbers)) if left >= settings.replay_parallel_min_records else 1
    if workers <= 1:
        await rebuild.fold_until(ends, count)
        return partitions, 1
    # Partition numbers dealt round-robin: the events and outcomes partitions of a number hold the
    # same assessments (both keyed by assessment id), so each process folds whole assessments, and
    # the schema takes folds of disjoint partitions side by side, as it does from a projector group.
    shares = [frozenset(p for p in numbers if p % workers == k) for k in range(workers)]
    theirs = [tp for tp in partitions if tp.partition not in shares[0]]
    consumer.pause(*theirs)
    jobs = [(share, {(tp.topic, tp.partition): ends[tp] for tp in partitions if tp.partition in share})
            for share in shares[1:]]
    await _fold_alongside(rebuild, settings, {tp: ends[tp] for tp in partitions if tp.partition in shares[0]}, jobs,
                          count)
    # Ordering: the workers' rows and offsets are committed; this process's consumer is still at the
    # offsets it read before they ran, so it moves to the stored ones (and reloads the quarantine and
    # fences they wrote) before phase 2 folds any of those partitions.
    await rebuild._seek_to_stored(theirs)
    return partitions, workers


async def _fold_alongside(
    rebuild: Projector, settings: Settings, own: dict[TopicPartition, int],
    jobs: list[tuple[frozenset[int], dict[tuple[str, int], int]]], count: Callable[[int], None],
) -> None:
    """Fold ``own`` here while one spawned process per job folds its partitions to their targets;
    their progress is counted as it comes, and the first failure stops the rest."""
    ctx = multiprocessing.get_context("spawn")  # not fork: this process has an event loop and sockets
    started: list[tuple[multiprocessing.process.BaseProcess, Connection, frozenset[int]]] = []
    try:
        for share, targets in jobs:
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=fold_partitions, args=(settings, share, targets, send), daemon=True,
                               name=f"replay-worker-{min(share)}")
            proc.start()
            send.close()  # the child's end: our copy closed, its exit is the pipe's end of file
            started.append((proc, receive, share))
        async with asyncio.TaskGroup() as group:  # a failure cancels the others
            group.create_task(rebuild.fold_until(own, count))
            for worker, pipe, numbers in started:
                group.create_task(_follow(worker, pipe, numbers, count))
    except BaseExceptionGroup as eg:
        raise eg.exceptions[0] from None  # the first failure, as a plain rebuild would raise it
    finally:
        for worker, pipe, _ in started:
            if worker.is_alive():
                worker.terminate()
            await asyncio.to_thread(worker.join, 30)
            pipe.close()


async def _follow(proc: multiprocessing.process.BaseProcess, receive: Connection, share: frozenset[int],
                  count: Callable[[int], None]) -> None:
    """Count a worker's folded batches as it reports them; raise its failure; return when it ends."""
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(receive.fileno(), readable.set)
    try:
        while True:
            await readable.wait()
            readable.clear()
            while receive.poll():
                try:
                    message = receive.recv()
                except EOFError:  # the worker ended: its exit code says how
                    await asyncio.to_thread(proc.join)
                    if proc.exitcode != 0:
                        raise BackendError(f"the rebuild worker for partitions {sorted(share)} exited with "
                                           f"{proc.exitcode} without reporting an error")
                    return
                if isinstance(message, int):
                    count(message)
                else:
                    kind, text = message
                    error = {"KafkaUnavailable": KafkaUnavailable, "DatabaseUnavailable": DatabaseUnavailable}.get(
                        kind, BackendError)
                    raise error(f"the rebuild worker for partitions {sorted(share)} failed: {kind}: {text}")
    finally:
        loop.remove_reader(receive.fileno())


def fold_partitions(settings: Settings, share: frozenset[int], targets: dict[tuple[str, int], int],
                    report: Connection) -> None:
    """A rebuild worker's process: fold partitions ``share`` of the rebuild schema up to ``targets``
    (offsets by topic and partition), reporting each batch's record count, or its failure, on ``report``."""
    async def run() -> None:
        async with Projector(settings, schema=REBUILD_SCHEMA, assign_all=True, partitions=share) as worker:
            await worker.fold_until({TopicPartition(t, p): end for (t, p), end in targets.items()}, report.send)

    try:
        asyncio.run(run())
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        report.send((type(e).__name__, str(e)))
        raise SystemExit(1) from e
    finally:
        report.close()


async def _catch_up_frozen(
    conn: asyncpg.Connection, rebuild: Projector, partitions: list[TopicPartition], group: str, force: bool,
    count: Callable[[int], None],
) -> None:
    """Phase 2: freeze the live projectors between two batches, then fold the rebuild up to exactly
    their offsets, so that both schemas reflect the same prefix of the log."""
    consumer = rebuild._consumer
    assert consumer is not None
    # Exclusive against fold_batch's shared lock on the live schema, until the transaction ends.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('fold_batch:' || $1))", LIVE_SCHEMA)
    live = await _live_offsets(conn, group)
    targets = {tp: max(live.get(tp, 0), await consumer.position(tp)) for tp in partitions}
    behind = {tp: (live.get(tp, 0), targets[tp]) for tp in partitions if live.get(tp, 0) < targets[tp]}
    if behind and not force:
        raise StoreUsageError(
            "the live projection is behind the rebuild, so they cannot be compared at the same "
            f"offsets ({_describe(behind)}); start the live projector and run replay again "
            "(the rebuild resumes where it is), or pass --force to swap anyway"
        )
    await rebuild.fold_until(targets, count)


async def _verify(conn: asyncpg.Connection, force: bool) -> tuple[Verification, int]:
    """Phase 3: the two schemas at the same offsets must be equal; and how many the rebuild quarantined."""
    verification = await verify_schemas(conn, LIVE_SCHEMA, REBUILD_SCHEMA)
    if not verification.ok and not force:
        raise StoreUsageError(
            f"the rebuilt projection differs from the live one at the same offsets: {verification}; "
            f"nothing was swapped, both schemas are kept for inspection ({REBUILD_SCHEMA}); "
            "--force swaps anyway"
        )
    return verification, int(await conn.fetchval(f"SELECT count(*) FROM {REBUILD_SCHEMA}.quarantine"))


async def _swap(conn: asyncpg.Connection, keep_old: bool) -> str:
    """Phase 4: the rebuild becomes ``projection``; returns the name the old schema had (dropped unless kept)."""
    old = f"projection_old_{datetime.now(UTC):%Y%m%d%H%M%S}"
    await conn.execute(
        f"UPDATE {REBUILD_SCHEMA}.meta SET generation = (SELECT generation + 1 FROM {LIVE_SCHEMA}.meta)"
    )
    await conn.execute(f"ALTER SCHEMA {LIVE_SCHEMA} RENAME TO {old}")
    await conn.execute(f"ALTER SCHEMA {REBUILD_SCHEMA} RENAME TO {LIVE_SCHEMA}")
    if not keep_old:
        await conn.execute(f"DROP SCHEMA {old} CASCADE")
    else:
        # A rename leaves other sessions' cached plans on the old tables; touching each table's
        # options invalidates them, so every reader re-resolves "projection.<table>" to the new schema.
        for table in ("assessments", "assessment_events", "command_outcomes", "anomalies",
                      "projector_offsets", "meta", "quarantine", "quarantine_held", "log_fences"):
            await conn.execute(f"ALTER TABLE {old}.{table} SET (autovacuum_enabled = true)")
    return old


async def _live_offsets(conn: asyncpg.Connection, group: str) -> dict[TopicPartition, int]:
    rows = await conn.fetch(
        f"SELECT topic, partition, next_offset FROM {LIVE_SCHEMA}.projector_offsets WHERE consumer_group = $1", group
    )
    return {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}


def _describe(behind: dict[TopicPartition, tuple[int, int]]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}] live {a} < rebuild {b}" for tp, (a, b) in sorted(behind.items()))
