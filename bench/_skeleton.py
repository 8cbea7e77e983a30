"""The pipeline skeleton: the command path's hops done by bare aiokafka and asyncpg with no logic.

A *skeleton processor* consumes commands and produces each command's bytes unchanged as an
"event" to the same partition of an events topic (acks=all, idempotent, the events acknowledged
before the command offsets are committed, as the store's processor orders them); a *skeleton
projector* consumes those events and COPYs them into a PostgreSQL table, one transaction per
batch with a NOTIFY of the batch's command ids, then commits its offsets. Each runs in a process
of its own, as the store's services do, so the CPU per command is read per process from /proc.

It is the reference the store's pipeline is measured against in the same run (``bench.commands``):
what the machine costs for the hops alone, without deciding, folding, fencing or idempotency.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from assessment_store import Settings
from assessment_store.core import run
from assessment_store.projections import connect
from assessment_store.streams import TopicSpec, ensure_topics, kafka_client_options

from ._cpu import CpuSnapshot, process_cpu_s

ID_HEADER = "skeleton-id"
CHANNEL = "bench_skeleton"
TABLE = "bench_skeleton_events"


@dataclass(frozen=True)
class SkeletonTopics:
    commands: str
    events: str

    @classmethod
    def of(cls, settings: Settings, run: str) -> SkeletonTopics:
        return cls(f"{settings.commands_topic}.skeleton-{run}", f"{settings.events_topic}.skeleton-{run}")


def _consumer(s: Settings, topic: str, group: str) -> AIOKafkaConsumer:
    """The consumer both skeleton processes read with: the store's services' fetch settings."""
    return AIOKafkaConsumer(topic, **kafka_client_options(s, "admin"), group_id=group, enable_auto_commit=False,
                            auto_offset_reset="earliest", isolation_level="read_committed",
                            max_poll_records=1000, fetch_max_wait_ms=s.fetch_max_wait_ms)


async def _processor(s: Settings, topics: SkeletonTopics, group: str) -> None:
    consumer = _consumer(s, topics.commands, group)
    # The store's processor's producer settings (streams/_processor.py, _EVENT_BATCH_BYTES included).
    producer = AIOKafkaProducer(**kafka_client_options(s, "admin"), acks="all", enable_idempotence=True, linger_ms=0,
                                max_batch_size=512 * 1024, max_request_size=4 * 1024 * 1024)
    await producer.start()
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            if not batch:
                continue
            futures = [await producer.send(topics.events, r.value, key=r.key, partition=tp.partition,
                                           headers=list(r.headers))
                       for tp, records in batch.items() for r in records]
            # Events acknowledged before the command offsets are committed, as the store does.
            await asyncio.gather(*futures)
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


async def _projector(s: Settings, topics: SkeletonTopics, group: str) -> None:
    consumer = _consumer(s, topics.events, group)
    conn = await connect(s)
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            if not batch:
                continue
            rows = []
            ids = []
            for tp, records in batch.items():
                for r in records:
                    cid = dict(r.headers).get(ID_HEADER, b"").decode()
                    ids.append(cid)
                    rows.append((tp.partition, r.offset, (r.key or b"").decode(), cid, r.value))
            async with conn.transaction():
                await conn.copy_records_to_table(TABLE, records=rows)
                for chunk in range(0, len(ids), 200):
                    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, ",".join(ids[chunk:chunk + 200]))
            await consumer.commit()
    finally:
        await consumer.stop()
        await conn.close()


def _run(role: str, s: Settings, topics: SkeletonTopics, group: str) -> None:
    main = _processor if role == "processor" else _projector
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    # The store's processes' loop (``Settings.event_loop``): the loop is the hops', not the logic's.
    run(main(s, topics, f"{group}-{role}"), s.event_loop)


class Skeleton:
    """The two skeleton processes for one run; ``start``/``stop`` them around the measurement."""

    def __init__(self, settings: Settings, run: str) -> None:
        self.settings = settings
        self.topics = SkeletonTopics.of(settings, run)
        self._group = f"bench-skeleton-{run}"
        self._procs: dict[str, multiprocessing.process.BaseProcess] = {}

    async def prepare(self) -> None:
        await ensure_topics(self.settings, [TopicSpec(self.topics.commands, self.settings.partitions, {}),
                                            TopicSpec(self.topics.events, self.settings.partitions, {})])
        conn = await connect(self.settings)
        try:
            await conn.execute(f"CREATE TABLE IF NOT EXISTS public.{TABLE} (partition int, kafka_offset bigint, "
                               "key text, command_id text, value bytea)")
        finally:
            await conn.close()

    def start(self, roles: tuple[str, ...] = ("processor", "projector")) -> None:
        ctx = multiprocessing.get_context("spawn")
        for role in roles:
            if role not in self._procs:
                p = ctx.Process(target=_run, args=(role, self.settings, self.topics, self._group), daemon=True)
                p.start()
                self._procs[role] = p

    def stop(self) -> None:
        for p in self._procs.values():
            p.terminate()
        for p in self._procs.values():
            p.join(10)
        self._procs.clear()

    def cpu_s(self) -> dict[str, float]:
        return {f"skeleton {role}": process_cpu_s(p.pid) for role, p in self._procs.items()}

    async def start_projector(self, timeout_s: float = 120.0) -> None:
        """Start the projector alone and return once it folds: one marker event written straight
        to the events topic is in the table (its group joined, its partitions assigned). The store's
        drain starts so, with its projector running, and only the processor started on the backlog."""
        self.start(("projector",))
        before = await self.rows()
        producer = AIOKafkaProducer(**kafka_client_options(self.settings, "admin"), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(self.topics.events, b"ready", key=b"ready", headers=[(ID_HEADER, b"ready")])
        finally:
            await producer.stop()
        deadline = time.monotonic() + timeout_s
        while await self.rows() <= before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the skeleton projector folded nothing within {timeout_s:.0f} s")
            await asyncio.sleep(0.05)

    async def rows(self) -> int:
        conn = await connect(self.settings)
        try:
            return int(await conn.fetchval(f"SELECT count(*) FROM public.{TABLE}"))
        finally:
            await conn.close()


class SkeletonClient:
    """Sends commands to the skeleton and waits, per command, for the NOTIFY naming its id."""

    def __init__(self, settings: Settings, topics: SkeletonTopics) -> None:
        self.settings = settings
        self.topics = topics
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> SkeletonClient:
        self._producer = AIOKafkaProducer(**kafka_client_options(self.settings, "admin"), acks="all",
                                          enable_idempotence=True, linger_ms=0)
        await self._producer.start()
        self._conn = await connect(self.settings)
        await self._conn.add_listener(CHANNEL, self._on_notify)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._producer is not None:
            await self._producer.stop()
        if self._conn is not None:
            await self._conn.close()

    def _on_notify(self, _c: object, _pid: int, _ch: str, payload: str) -> None:
        for cid in payload.split(","):
            f = self._waiting.pop(cid, None)
            if f is not None and not f.done():
                f.set_result(None)

    async def execute(self, key: bytes, value: bytes, command_id: str) -> None:
        assert self._producer is not None
        future = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = future
        await (await self._producer.send(self.topics.commands, value, key=key,
                                         headers=[(ID_HEADER, command_id.encode())]))
        await asyncio.wait_for(future, 30)


async def drain_rate(skeleton: Skeleton, n: int, poll: Callable[[], float] = time.perf_counter
                     ) -> tuple[float, dict[str, float]]:
    """Start the skeleton's processor on ``n`` pre-loaded commands, its projector already running
    (``start_projector``): (commands/s from first row to last, CPU s per process).

    Both started together, the projector's group could join after the processor had drained much
    of the backlog, and the rate timed from the first row was then mostly the projector's alone
    (18,000-65,000 commands/s from one run to the next on the same machine).

    Rows are counted off the projector's own NOTIFYs (a batch's command ids, 200 to a
    notification) on one LISTEN connection opened before the processor starts. Counting the
    table instead (a new connection and a ``count(*)`` every 20 ms, as this did before) cost
    PostgreSQL a third of a core during the drain, more per command the longer the table and
    the slower the drain, and was charged to the pipeline measured."""
    conn = await connect(skeleton.settings)
    done = asyncio.get_running_loop().create_future()
    seen = 0
    first: float | None = None
    cpu_first: dict[str, float] = {}

    def on_notify(_c: object, _pid: int, _ch: str, payload: str) -> None:
        nonlocal seen, first, cpu_first
        if first is None:
            first, cpu_first = poll(), skeleton.cpu_s()
        seen += payload.count(",") + 1
        if seen >= n and not done.done():
            done.set_result(poll())

    try:
        await conn.add_listener(CHANNEL, on_notify)
        skeleton.start()
        try:
            last = await asyncio.wait_for(done, 600)
        except TimeoutError:
            raise RuntimeError(f"the skeleton did not drain within 600 s ({seen:,} of {n:,} rows)") from None
    finally:
        await conn.close()
    cpu = CpuSnapshot(skeleton.cpu_s()).minus(CpuSnapshot(cpu_first))
    assert first is not None
    return n / (last - first), cpu
