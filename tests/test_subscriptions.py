"""Client subscriptions against the real broker: catch-up then live, exact resume from a stored
position, starts at a time, filters, checkpoints in the service's transaction, schema resolution
through the schemas topic, fences, added partitions, and the example service surviving a kill -9.

Each test reads an events topic of its own (``<name>.events`` beside its own ``<name>.schemas``),
written with ``streams.testing.EventProducer``, so what it reads is exactly what it wrote."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewPartitions

from assessment_store import (
    AssessmentStore,
    EventRecord,
    Position,
    PositionTable,
    Settings,
    Subscription,
    SyncAssessmentStore,
    UnresolvableSchema,
    ValidationError,
)
from assessment_store.core import Completed, Created, Event, Payload, ProgressUpdated, Started
from assessment_store.projections import connect
from assessment_store.schemas import EventCodec
from assessment_store.stack import settings_env
from assessment_store.streams import TopicSpec, admin_client, ensure_topics, kafka_client_options, schemas_topic, \
    schemas_topic_spec
from assessment_store.streams.testing import EventProducer
from assessment_store.testing import encode_with_newer_writer, eventually, newer_event_writer

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.now(UTC).replace(microsecond=0)


async def _own_topic(settings: Settings, partitions: int = 3) -> Settings:
    """Settings whose events topic (and schemas topic beside it) are new and this test's alone."""
    s = settings.model_copy(update={"events_topic": f"sub-{uuid.uuid4().hex[:10]}.events"})
    await ensure_topics(s, [TopicSpec(s.events_topic, partitions, {}), schemas_topic_spec(s)])
    return s


def _lifecycle(aid: str, at: datetime = NOW) -> list[Event]:
    payloads: Sequence[Payload] = (Created({"n": aid}), Started("w"), ProgressUpdated(50), Completed({"ok": 1}, 5))
    return [Event(aid, v, p, at, at) for v, p in enumerate(payloads, start=1)]


async def _append(settings: Settings, events: list[Event]) -> None:
    async with EventProducer(settings) as producer:
        for ev in events:
            await producer.append(ev)


async def _take(sub: Subscription, n: int, timeout_s: float = 30.0) -> list[EventRecord]:
    got: list[EventRecord] = []
    async with asyncio.timeout(timeout_s):
        while len(got) < n:
            got.append(await anext(sub))
    return got


async def _nothing_more(sub: Subscription, wait_s: float = 1.5) -> None:
    """Nothing is delivered within ``wait_s`` (a bounded wait for an absence, not a synchronization)."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(wait_s):
            extra = await anext(sub)
            pytest.fail(f"unexpected {extra}")


def _keys(recs: list[EventRecord]) -> list[tuple[str, int]]:
    return [(r.event.assessment_id, r.event.version) for r in recs]


# --- Position -------------------------------------------------------------------------------


def test_position_text_round_trips_and_bad_text_is_refused() -> None:
    """str(Position) parses back to an equal value (offsets and fence epochs); malformed text raises ValidationError."""
    p = Position.of("assessments.events", {2: 0, 0: 15, 1: 7}, {1: 3, 0: 0})
    assert str(p) == "assessments.events:0=15,1=7@3,2=0"
    assert Position.parse(str(p)) == p and p.next_offset(1) == 7 and p.epoch_map() == {1: 3}
    for bad in ("no-colon", "t:0=x", "t:0=1,0=2", "bad topic!:0=1", "t:-1=3"):
        with pytest.raises(ValidationError):
            Position.parse(bad)


def test_only_one_start_may_be_given() -> None:
    """from_position, from_time and from_end are exclusive, and a position on another topic is refused."""
    s = Settings()
    with pytest.raises(ValidationError):
        Subscription(s, from_end=True, from_time=NOW)
    with pytest.raises(ValidationError):
        Subscription(s, from_position="other.events:0=1")
    with pytest.raises(ValidationError):
        Subscription(s, types=["NoSuchEvent"])


# --- reading ----------------------------------------------------------------------------------


@pytest.mark.stack
async def test_catches_up_from_the_log_then_follows_live(stack_settings: Settings) -> None:
    """Events already in the log come first, in version order per assessment; events appended later arrive live."""
    s = await _own_topic(stack_settings)
    await _append(s, _lifecycle("cu-a") + _lifecycle("cu-b"))
    async with AssessmentStore(s) as store, store.subscribe() as sub:
        old = await _take(sub, 8)
        assert sorted(_keys(old)) == sorted((a, v) for a in ("cu-a", "cu-b") for v in range(1, 5))
        for aid in ("cu-a", "cu-b"):
            assert [r.event.version for r in old if r.assessment_id == aid] == [1, 2, 3, 4]
        assert sub.caught_up
        assert old[0].topic == s.events_topic and old[0].timestamp.tzinfo is not None
        await _append(s, _lifecycle("cu-c"))
        live = await _take(sub, 4)
        assert _keys(live) == [("cu-c", v) for v in range(1, 5)]
        assert sub.stats.delivered == 12


@pytest.mark.stack
async def test_resumes_from_a_stored_position_exactly_across_a_process_restart(stack_settings: Settings) -> None:
    """A position printed by one process and resumed by another yields the rest: no event twice, none missing."""
    s = await _own_topic(stack_settings)
    events = [ev for i in range(5) for ev in _lifecycle(f"rs-{i}")]
    await _append(s, events)
    script = (
        "import asyncio\n"
        "from assessment_store import AssessmentStore, Settings\n"
        "async def main():\n"
        "    async with AssessmentStore(Settings()) as store, store.subscribe() as sub:\n"
        "        for _ in range(7):\n"
        "            rec = await anext(sub)\n"
        "            print(rec.event.assessment_id, rec.event.version, flush=True)\n"
        "        print(rec.position, flush=True)\n"
        "asyncio.run(main())\n"
    )
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                           env={**os.environ, **settings_env(s)})
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    seen = [(a, int(v)) for a, v in (line.split() for line in lines[:7])]
    stored = Position.parse(lines[7])
    async with AssessmentStore(s) as store, store.subscribe(from_position=str(stored)) as sub:
        rest = await _take(sub, len(events) - 7)
        await _nothing_more(sub)
    assert sorted(seen + _keys(rest)) == sorted((e.assessment_id, e.version) for e in events)


@pytest.mark.stack
async def test_from_time_starts_at_the_first_record_at_or_after_it(stack_settings: Settings) -> None:
    """from_time skips records older than the time (by their Kafka timestamp) in every partition."""
    s = await _own_topic(stack_settings)
    old, new = NOW - timedelta(hours=2), NOW
    await _append(s, _lifecycle("ft-old-1", old) + _lifecycle("ft-old-2", old))
    await _append(s, _lifecycle("ft-new-1", new) + _lifecycle("ft-new-2", new))
    async with AssessmentStore(s) as store, store.subscribe(from_time=NOW - timedelta(hours=1)) as sub:
        got = await _take(sub, 8)
        await _nothing_more(sub)
    assert {r.assessment_id for r in got} == {"ft-new-1", "ft-new-2"}


@pytest.mark.stack
async def test_from_end_reads_only_what_comes_next(stack_settings: Settings) -> None:
    """from_end delivers nothing already in the log and what is appended afterwards."""
    s = await _own_topic(stack_settings)
    await _append(s, _lifecycle("fe-old"))
    async with AssessmentStore(s) as store, store.subscribe(from_end=True) as sub:
        assert sub.caught_up
        await _append(s, _lifecycle("fe-new"))
        assert {r.assessment_id for r in await _take(sub, 4)} == {"fe-new"}


@pytest.mark.stack
async def test_types_and_assessment_filters_keep_only_what_was_asked(stack_settings: Settings) -> None:
    """types= keeps those event types, assessment_ids= those assessments; filtered records still move the position."""
    s = await _own_topic(stack_settings, partitions=1)
    await _append(s, _lifecycle("tf-a") + _lifecycle("tf-b"))
    async with AssessmentStore(s) as store:
        async with store.subscribe(types=["AssessmentCompleted", "AssessmentCreated"]) as sub:
            got = await _take(sub, 4)
            assert [(r.assessment_id, r.type.value) for r in got] == [
                ("tf-a", "AssessmentCreated"), ("tf-a", "AssessmentCompleted"),
                ("tf-b", "AssessmentCreated"), ("tf-b", "AssessmentCompleted")]
            assert got[-1].position.next_offset(0) == 8 and sub.stats.filtered == 4
        async with store.subscribe(assessment_ids=["tf-b"], types=["ProgressUpdated"]) as sub:
            only = await _take(sub, 1)
            await _nothing_more(sub)
            assert _keys(only) == [("tf-b", 3)] and sub.position.next_offset(0) == 8


@pytest.mark.stack
async def test_the_store_writes_reach_a_subscriber(store: AssessmentStore) -> None:
    """An assessment driven through the command path shows up on the store's own events topic, in order."""
    started = datetime.now(UTC) - timedelta(seconds=5)
    aid = await store.create_assessment({"subject": "subscriber"})
    await store.start_assessment(aid)
    await store.complete_assessment(aid, {"score": 3})
    async with store.subscribe(from_time=started, assessment_ids=[aid]) as sub:
        got = await _take(sub, 3)
    assert [r.type.value for r in got] == ["AssessmentCreated", "AssessmentStarted", "AssessmentCompleted"]


@pytest.mark.stack
def test_the_sync_client_subscribes_too(stack_settings: Settings) -> None:
    """SyncAssessmentStore.subscribe iterates events; get() with a timeout returns None when nothing comes."""
    s = asyncio.run(_own_topic(stack_settings))
    asyncio.run(_append(s, _lifecycle("sync-a")))
    with SyncAssessmentStore(s) as store, store.subscribe() as sub:
        got = [next(sub) for _ in range(4)]
        assert _keys(got) == [("sync-a", v) for v in range(1, 5)]
        assert sub.get(timeout_s=0.5) is None
        assert sub.position.next_offset(got[-1].partition) == got[-1].offset + 1


# --- checkpoints ------------------------------------------------------------------------------


@pytest.mark.stack
async def test_a_checkpoint_commits_or_rolls_back_with_the_services_transaction(stack_settings: Settings) -> None:
    """PositionTable.save inside a rolled-back transaction leaves the stored position as it was; outside one it is refused."""
    table = PositionTable("test-sub", f"subtest_{uuid.uuid4().hex[:8]}")
    conn = await connect(stack_settings)
    try:
        await table.create(conn)
        assert await table.load(conn, "x.events") is None
        first = Position.of("x.events", {0: 5, 1: 2}, {1: 4})
        async with conn.transaction():
            await table.save(conn, first)
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await table.save(conn, Position.of("x.events", {0: 9, 1: 9}))
                raise RuntimeError("the read-model update failed")
        assert await table.load(conn, "x.events") == first
        with pytest.raises(ValidationError):
            await table.save(conn, first)
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table.table}")
        await conn.close()
    with pytest.raises(ValidationError):
        PositionTable("x", "bad; DROP TABLE y")


@pytest.mark.stack
def test_the_example_service_resumes_after_kill_nothing_lost_or_doubled(stack_settings: Settings) -> None:
    """examples/completed_per_day.py killed with SIGKILL mid-way, then run to the end, counts every completion once."""
    s = asyncio.run(_own_topic(stack_settings))
    days = [NOW - timedelta(days=d) for d in range(3)]
    events = [ev for i in range(150) for ev in _lifecycle(f"ex-{i}", days[i % 3])]
    asyncio.run(_append(s, events))
    schema = f"ex_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **settings_env(s)}
    cmd = [sys.executable, str(ROOT / "examples" / "completed_per_day.py"), "--schema", schema]

    async def progress() -> int:
        conn = await connect(s)
        try:
            return await _completed(conn, schema)
        finally:
            await conn.close()

    proc = subprocess.Popen([*cmd, "--delay-ms", "20"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        asyncio.run(eventually(progress, lambda n: n >= 20, timeout_s=60, what="the example counting"))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    killed_at = asyncio.run(progress())
    assert 20 <= killed_at < 150, killed_at
    done = subprocess.run([*cmd, "--until-caught-up"], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr

    async def counts() -> dict[str, int]:
        conn = await connect(s)
        try:
            rows = await conn.fetch(f"SELECT day, completed FROM {schema}.completed_per_day")
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
            return {str(r["day"]): r["completed"] for r in rows}
        finally:
            await conn.close()

    assert asyncio.run(counts()) == {str(d.date()): 50 for d in days}


async def _completed(conn: Any, schema: str) -> int:
    exists = await conn.fetchval("SELECT to_regclass($1)", f"{schema}.completed_per_day")
    if exists is None:
        return 0
    return int(await conn.fetchval(f"SELECT coalesce(sum(completed), 0) FROM {schema}.completed_per_day"))


# --- decoding: schemas, old format, fences, partitions -----------------------------------------


@contextlib.asynccontextmanager
async def _raw_producer(s: Settings) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(**kafka_client_options(s, "admin"), acks="all")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@pytest.mark.stack
async def test_an_unknown_fingerprint_is_resolved_through_the_schemas_topic(stack_settings: Settings) -> None:
    """An event of a newer writer schema, published on the schemas topic, is decoded after one look-up."""
    s = await _own_topic(stack_settings, partitions=1)
    newer, prefix = newer_event_writer()
    async with _raw_producer(s) as producer:
        await producer.send_and_wait(schemas_topic(s), json.dumps(newer).encode(), key=prefix[2:].hex().encode())
        for ev in _lifecycle("nw-1")[:2]:
            await producer.send_and_wait(s.events_topic, encode_with_newer_writer(newer, prefix, ev), key=b"nw-1",
                                         headers=[("type", ev.type.value.encode())])
    async with AssessmentStore(s) as store, store.subscribe() as sub:
        got = await _take(sub, 2)
    assert _keys(got) == [("nw-1", 1), ("nw-1", 2)] and sub.stats.schema_lookups == 1


@pytest.mark.stack
async def test_an_unresolvable_record_raises_and_the_position_stays_before_it(stack_settings: Settings) -> None:
    """A record whose writer schema is nowhere raises UnresolvableSchema naming it; nothing after it is delivered."""
    s = await _own_topic(stack_settings, partitions=1)
    await _append(s, _lifecycle("ur-1")[:1])
    newer, prefix = newer_event_writer()
    async with _raw_producer(s) as producer:
        await producer.send_and_wait(s.events_topic, encode_with_newer_writer(newer, prefix, _lifecycle("ur-1")[1]),
                                     key=b"ur-1", headers=[("type", b"AssessmentStarted")])
    await _append(s, _lifecycle("ur-1")[2:3])
    async with AssessmentStore(s) as store, store.subscribe() as sub:
        assert _keys(await _take(sub, 1)) == [("ur-1", 1)]
        with pytest.raises(UnresolvableSchema) as caught:
            await _take(sub, 1)
        assert (caught.value.topic, caught.value.partition, caught.value.offset) == (s.events_topic, 0, 1)
        assert caught.value.fingerprint == prefix[2:].hex()
        assert sub.position.next_offset(0) == 1  # before the record: a restart reads it again


@pytest.mark.stack
async def test_records_of_the_old_header_format_are_decoded(stack_settings: Settings) -> None:
    """Schemaless Avro with the fingerprint in the schema-fingerprint header decodes like a single object."""
    s = await _own_topic(stack_settings, partitions=1)
    codec = EventCodec()
    ev = _lifecycle("oh-1")[0]
    value, headers = codec.encode(ev)
    old_value = value[10:]  # the record without the single-object prefix
    async with _raw_producer(s) as producer:
        await producer.send_and_wait(s.events_topic, old_value, key=b"oh-1",
                                     headers=[*headers, ("schema-fingerprint", codec.fingerprint.encode())])
    async with AssessmentStore(s) as store, store.subscribe() as sub:
        got = await _take(sub, 1)
    assert got[0].event == ev


@pytest.mark.stack
async def test_fences_and_a_zombies_late_writes_are_passed_over_also_after_resuming(stack_settings: Settings) -> None:
    """Fence records are not delivered, nor a record written below the fence; a resumed position keeps the fence."""
    s = await _own_topic(stack_settings, partitions=1)
    codec = EventCodec()

    def rec(ev: Event, epoch: int) -> tuple[bytes, list[tuple[str, bytes]]]:
        value, headers = codec.encode(ev)
        return value, [*headers, ("writer-epoch", str(epoch).encode())]

    a = _lifecycle("fz-1")
    async with _raw_producer(s) as producer:
        for value, headers in (rec(a[0], 1), (b"", [("fence-epoch", b"2"), ("type", b"ProcessorFence")]),
                               rec(a[1], 2)):
            await producer.send_and_wait(s.events_topic, value, key=b"fz-1", headers=headers)
    async with AssessmentStore(s) as store:
        async with store.subscribe() as sub:
            got = await _take(sub, 2)
            assert _keys(got) == [("fz-1", 1), ("fz-1", 2)] and sub.stats.fences == 1
            stored = got[-1].position
        assert stored.epoch_map() == {0: 2}
        async with _raw_producer(s) as producer:
            for value, headers in (rec(Event("fz-1", 3, ProgressUpdated(9), NOW, NOW), 1), rec(a[2], 2)):
                await producer.send_and_wait(s.events_topic, value, key=b"fz-1", headers=headers)
        async with store.subscribe(from_position=stored) as sub:
            got = await _take(sub, 1)
            assert _keys(got) == [("fz-1", 3)] and got[0].event == a[2] and sub.stats.fenced == 1


@pytest.mark.stack
async def test_partitions_added_while_reading_are_detected_and_read(stack_settings: Settings) -> None:
    """A partition added to the topic during a subscription is picked up and read from its start."""
    s = await _own_topic(stack_settings, partitions=1)
    async with AssessmentStore(s) as store, store.subscribe(partition_check_s=1.0) as sub:
        await _append(s, _lifecycle("pa-0")[:1])
        assert _keys(await _take(sub, 1)) == [("pa-0", 1)]
        async with admin_client(s) as admin:
            await admin.create_partitions({s.events_topic: NewPartitions(2)})
        async with _raw_producer(s) as producer:
            value, headers = EventCodec().encode(_lifecycle("pa-1")[0])
            await producer.send_and_wait(s.events_topic, value, key=b"pa-1", headers=headers, partition=1)
        got = await _take(sub, 1, timeout_s=60)
        assert (got[0].assessment_id, got[0].partition) == ("pa-1", 1)
        assert sub.stats.partitions_added == 1 and got[0].position.offset_map() == {0: 1, 1: 1}


@pytest.mark.stack
async def test_a_subscription_rides_out_a_broker_restart(tmp_path: Path) -> None:
    """A broker of the test's own stopped and started again under a subscription: it reconnects and reads on."""
    from assessment_store.stack import KafkaService
    from assessment_store.testing import isolated_settings

    from .conftest import PORT_BASE

    own = isolated_settings(tmp_path / "data", port_base=PORT_BASE + 410)
    kafka = KafkaService(own)
    await asyncio.to_thread(kafka.start, log=lambda _m: None)  # it runs a loop of its own
    try:
        s = await _own_topic(own, partitions=1)
        await _append(s, _lifecycle("br-1"))
        async with Subscription(s) as sub:  # Kafka only: this broker has no PostgreSQL beside it
            assert _keys(await _take(sub, 4)) == [("br-1", v) for v in range(1, 5)]
            await asyncio.to_thread(kafka.stop)
            await asyncio.to_thread(kafka.start, log=lambda _m: None)
            await _append(s, _lifecycle("br-2"))
            assert _keys(await _take(sub, 4, timeout_s=90)) == [("br-2", v) for v in range(1, 5)]
    finally:
        await asyncio.to_thread(kafka.stop)
