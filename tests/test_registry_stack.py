"""The wire formats on a real broker: the command processor and the reverse sync resolving records of
newer writers (schemas topic, schema registry) instead of dead-lettering or skipping them, stopping a
partition at a record they cannot resolve, rolling upgrades both ways (old header format, single
objects, Confluent records in one log), and an independent decoder: plain fastavro reading the raw
bytes the store wrote, knowing only the wire format rules of docs/events.md.

Each test has topics of its own (and an in-process processor on them), so nothing depends on what
the session's log already holds. The registry is the in-repo double of the Confluent protocol
(``stack.MiniSchemaRegistry``) served over HTTP in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from fastavro.schema import to_parsing_canonical_form

from assessment_store import Settings
from assessment_store.core import (
    Command, CommandEnvelope, Complete, Create, Event, EventSource, Start, UpdateProgress, decide, evolve,
)
from assessment_store.migration import ReverseSync
from assessment_store.schemas import FINGERPRINT_HEADER, SCHEMA_DIR, CommandCodec, EventCodec, crc64_avro
from assessment_store.stack import MiniSchemaRegistry
from assessment_store.streams import (
    CommandProcessor, CommandSender, SchemaRegistryClient, SchemaResolver, ensure_topics, kafka_client_options, registry_subject,
    schemas_topic,
)
from assessment_store.testing import eventually

pytestmark = pytest.mark.stack

NOW = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.fixture
def registry() -> Iterator[MiniSchemaRegistry]:
    with MiniSchemaRegistry(port=0) as r:
        yield r


def _private(settings: Settings, registry_url: str | None = None) -> Settings:
    """Topics and groups of its own (two partitions: quick to take over), optionally in registry mode."""
    p = f"reg{uuid.uuid4().hex[:8]}"
    return settings.model_copy(update={
        "events_topic": f"{p}.events", "commands_topic": f"{p}.commands", "outcomes_topic": f"{p}.outcomes",
        "legacy_topic": f"{p}.legacy", "processor_group": f"{p}-processor", "partitions": 2,
        "schema_registry_url": registry_url,
    })


@contextlib.asynccontextmanager
async def _processor(s: Settings) -> AsyncIterator[CommandProcessor]:
    await ensure_topics(s)
    stop = asyncio.Event()
    async with CommandProcessor(s) as proc:
        task = asyncio.create_task(proc.run(stop))
        try:
            await eventually(lambda: _now(proc), lambda p: len(p.owned_partitions) == 2 or task.done(), timeout_s=60,
                             what="the processor owning both partitions")
            yield proc
        finally:
            stop.set()
            await task


async def _now(proc: CommandProcessor) -> CommandProcessor:
    return proc


async def _records(s: Settings, topic: str, partitions: int | None = None) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` (``partitions``: default the settings') so far, by partition then offset."""
    consumer = AIOKafkaConsumer(**kafka_client_options(s, "admin"), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions or s.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[ConsumerRecord[bytes, bytes]] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for recs in (await consumer.getmany(*tps, timeout_ms=500)).values():
                out.extend(r for r in recs if r.offset < ends[TopicPartition(r.topic, r.partition)])
        return sorted(out, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


async def _events_of(s: Settings, prefix: str) -> list[Event]:
    """The events of the assessments whose id starts with ``prefix`` (resolving writer schemas as a reader does)."""
    codec = EventCodec()
    records = [r for r in await _records(s, s.events_topic) if r.value and (r.key or b"").decode().startswith(prefix)]
    await SchemaResolver(s, "admin", [codec.avro]).learn({TopicPartition(s.events_topic, 0): records})
    return [codec.decode(r.value, r.headers) for r in records]


def _newer(schema_file: str) -> dict[str, Any]:
    """A newer version of a schema: one more optional field before the last (a newer writer's)."""
    newer: dict[str, Any] = copy.deepcopy(json.loads((SCHEMA_DIR / schema_file).read_text()))
    newer["fields"].insert(-1, {"name": "tenant", "type": ["null", "string"], "default": None})
    return newer


def _fingerprint(schema: dict[str, Any]) -> str:
    return crc64_avro(to_parsing_canonical_form(fastavro.parse_schema(schema)).encode()).to_bytes(8, "little").hex()


def _command_record(cmd: Command) -> dict[str, Any]:
    """The Avro record of a command as the current CommandCodec writes it (to re-encode with another schema)."""
    codec = CommandCodec()
    value, _ = codec.encode(CommandEnvelope(cmd, NOW, EventSource.STORE))
    record = fastavro.schemaless_reader(io.BytesIO(value[10:]), codec.avro.parsed, return_record_name=True)
    assert isinstance(record, dict)
    return record


def _write(schema: dict[str, Any], record: dict[str, Any], prefix: bytes) -> bytes:
    buf = io.BytesIO()
    buf.write(prefix)
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


async def _produce(s: Settings, topic: str, items: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> None:
    producer = AIOKafkaProducer(**kafka_client_options(s, "admin"), acks="all")
    await producer.start()
    try:
        for key, value, headers in items:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


async def _dead_letters(s: Settings) -> int:
    return len(await _records(s, s.commands_topic + ".dlq", 1))


async def test_a_command_of_a_newer_writer_is_processed_not_dead_lettered(stack_settings: Settings) -> None:
    """A single-object command with one more optional field, its schema on the schemas topic, gets its event; no dead letter."""
    s = _private(stack_settings)
    newer = _newer("assessment_command.avsc")
    fp = _fingerprint(newer)
    aid = f"{s.events_topic[:11]}-new"
    async with _processor(s) as proc:
        await _produce(s, schemas_topic(s), [(fp.encode(), json.dumps(newer).encode(), [])])
        record = {**_command_record(Create(assessment_id=aid, command_id=f"{aid}-c1", request={"n": 1})), "tenant": "t"}
        await _produce(s, s.commands_topic, [(aid.encode(), _write(newer, record, b"\xc3\x01" + bytes.fromhex(fp)),
                                              [("type", b"Create")])])
        events = await eventually(lambda: _events_of(s, aid), lambda e: len(e) == 1, timeout_s=60,
                                  what="the newer command's event")
        assert events[0].causation_id == f"{aid}-c1" and events[0].payload.request == {"n": 1}  # type: ignore[union-attr]
        assert proc.stats.dead_lettered == 0 and proc.stats.unresolvable == 0 and proc.stats.accepted == 1
    assert await _dead_letters(s) == 0


async def test_an_unresolvable_command_stops_its_partition_until_its_schema_is_published(stack_settings: Settings) -> None:
    """A command whose schema is nowhere stops its partition (counted, not dead-lettered, the next command waits);
    publishing the schema resumes it in order."""
    s = _private(stack_settings)
    newer = _newer("assessment_command.avsc")
    fp = _fingerprint(newer)
    aid = f"{s.events_topic[:11]}-stop"
    first = {**_command_record(Create(assessment_id=aid, command_id=f"{aid}-c1", request={"n": 1})), "tenant": "t"}
    second, _ = CommandCodec().encode(CommandEnvelope(Start(assessment_id=aid, command_id=f"{aid}-c2"), NOW,
                                                      EventSource.STORE))
    async with _processor(s) as proc:
        await _produce(s, s.commands_topic, [
            (aid.encode(), _write(newer, first, b"\xc3\x01" + bytes.fromhex(fp)), [("type", b"Create")]),
            (aid.encode(), second, [("type", b"Start")]),
        ])
        await eventually(lambda: _now(proc), lambda p: p.stats.unresolvable >= 1, timeout_s=60,
                         what="the processor stopping at the unresolvable command")
        assert await _events_of(s, aid) == []  # the Start behind it waits too: order is kept
        assert proc.stats.dead_lettered == 0
        families = {f.name: f for f in proc.stats.metric_families()}
        assert "assessment_store_processor_unresolvable_schema_total" in families
        await _produce(s, schemas_topic(s), [(fp.encode(), json.dumps(newer).encode(), [])])
        events = await eventually(lambda: _events_of(s, aid), lambda e: len(e) == 2, timeout_s=60,
                                  what="both commands handled once the schema is published")
        assert [e.version for e in events] == [1, 2] and [e.causation_id for e in events] == [f"{aid}-c1", f"{aid}-c2"]
        assert proc.stats.dead_lettered == 0 and proc.stats.accepted == 2
    assert await _dead_letters(s) == 0


async def test_rolling_upgrade_registry_mode_reads_old_single_object_and_newer_confluent_commands(
        stack_settings: Settings, registry: MiniSchemaRegistry) -> None:
    """A processor in registry mode handles, in one partition, a v1 command in the old header format, a current
    single object, a newer writer's Confluent record (id from the registry) and its own Confluent deadline-free writes."""
    s = _private(stack_settings, registry.url)
    aid = f"{s.events_topic[:11]}-mix"
    v1 = json.loads((SCHEMA_DIR / "history" / "assessment_command.v1.avsc").read_text())
    newer = _newer("assessment_command.avsc")
    newer_id = await SchemaRegistryClient(s).register(registry_subject(s.commands_topic), json.dumps(newer))
    codec = CommandCodec()
    create = _command_record(Create(assessment_id=aid, command_id=f"{aid}-c1", request={"n": 1}))
    v1_fields = {f["name"] for f in v1["fields"]}
    old = _write(v1, {k: v for k, v in create.items() if k in v1_fields}, b"")
    single, _ = codec.encode(CommandEnvelope(Start(assessment_id=aid, command_id=f"{aid}-c2"), NOW, EventSource.STORE))
    progress = {**_command_record(UpdateProgress(assessment_id=aid, command_id=f"{aid}-c3", progress=40)),
                "tenant": "t"}
    confluent = _write(newer, progress, b"\x00" + newer_id.to_bytes(4, "big"))
    async with _processor(s) as proc:
        await _produce(s, s.commands_topic, [
            (aid.encode(), old, [("type", b"Create"), (FINGERPRINT_HEADER, _fingerprint(v1).encode())]),
            (aid.encode(), single, [("type", b"Start")]),
            (aid.encode(), confluent, [("type", b"UpdateProgress")]),
        ])
        events = await eventually(lambda: _events_of(s, aid), lambda e: len(e) == 3, timeout_s=60,
                                  what="the three commands' events")
        assert [e.causation_id for e in events] == [f"{aid}-c1", f"{aid}-c2", f"{aid}-c3"]
        assert events[2].payload.progress == 40  # type: ignore[union-attr]
        assert (proc.stats.dead_lettered, proc.stats.unresolvable) == (0, 0)
    raw = [r for r in await _records(s, s.events_topic) if r.value]
    assert raw and all(r.value[0] == 0 for r in raw)  # type: ignore[index]  # the processor writes the Confluent format


async def test_an_older_processor_reads_a_newer_processors_events_while_taking_over(stack_settings: Settings) -> None:
    """Events written with a newer event schema (published to the schemas topic) are folded when a processor
    takes the partition over: the next command sees version 2, not a fresh assessment."""
    s = _private(stack_settings)
    await ensure_topics(s)
    newer = _newer("assessment_event.avsc")
    fp = _fingerprint(newer)
    aid = f"{s.events_topic[:11]}-take"
    ev = decide(None, Create(assessment_id=aid, command_id=f"{aid}-c1", request={"n": 1}), NOW)
    codec = EventCodec()
    value, headers = codec.encode(ev)
    body = fastavro.schemaless_reader(io.BytesIO(value[10:]), codec.avro.parsed, return_record_name=True)
    assert isinstance(body, dict)
    await _produce(s, schemas_topic(s), [(fp.encode(), json.dumps(newer).encode(), [])])
    # Where a processor would have put it: the partition of its key, like the command's.
    sender = CommandSender(s)
    try:
        meta = await sender.send(CommandEnvelope(Start(assessment_id=aid, command_id=f"{aid}-c2"), NOW, EventSource.STORE))
    finally:
        await sender.stop()
    producer = AIOKafkaProducer(**kafka_client_options(s, "admin"), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(s.events_topic, _write(newer, {**body, "tenant": "t"}, b"\xc3\x01" + bytes.fromhex(fp)),
                                     key=aid.encode(), partition=meta.partition,
                                     headers=[*headers, ("command-offset", b"-1")])
    finally:
        await producer.stop()
    async with _processor(s) as proc:
        events = await eventually(lambda: _events_of(s, aid), lambda e: len(e) == 2, timeout_s=60,
                                  what="the Start's event after the newer Create")
        assert [e.version for e in events] == [1, 2] and proc.stats.unresolvable == 0


async def test_the_reverse_sync_resolves_a_newer_writers_event(stack_settings: Settings, registry: MiniSchemaRegistry) -> None:
    """An event of a newer writer (a Confluent record whose id is in the registry) is synced, not counted undecodable."""
    s = _private(stack_settings, registry.url)
    await ensure_topics(s)
    aid = f"{s.events_topic[:11]}-rev"
    newer = _newer("assessment_event.avsc")
    newer_id = await SchemaRegistryClient(s).register(registry_subject(s.events_topic), json.dumps(newer))
    state = None
    items = []
    codec = EventCodec()
    for i, cmd in enumerate([Create(assessment_id=aid, request={"r": 1}), Start(assessment_id=aid),
                             Complete(assessment_id=aid, result={"ok": True}, duration_ms=3)]):
        ev = decide(state, cmd, NOW)
        state = evolve(state, ev)
        value, headers = codec.encode(ev)
        body = fastavro.schemaless_reader(io.BytesIO(value[10:]), codec.avro.parsed, return_record_name=True)
        assert isinstance(body, dict)
        framed = b"\x00" + newer_id.to_bytes(4, "big") if i else b""  # the first one: a current writer's single object
        items.append((aid.encode(), _write(newer, {**body, "tenant": "t"}, framed) if i else value, headers))
    await _produce(s, s.events_topic, items)
    stop = asyncio.Event()
    async with ReverseSync(s, group_id=f"{s.processor_group}-rev") as sync:
        task = asyncio.create_task(sync.run(stop))
        try:
            await eventually(lambda: _now(sync), lambda x: x.stats.emitted >= 3, timeout_s=60,
                             what="three legacy messages")
        finally:
            stop.set()
            await task
    assert (sync.stats.undecodable, sync.stats.unresolvable, sync.stats.emitted) == (0, 0, 3)
    messages = [json.loads(r.value or b"{}") for r in await _records(s, s.legacy_reverse_topic)]
    assert [m["event"] for m in messages] == ["assessment.created", "assessment.started", "assessment.completed"]


async def test_the_reverse_sync_stops_at_an_event_it_cannot_resolve(stack_settings: Settings) -> None:
    """Without a registry configured, a Confluent event cannot be resolved: the partition stops there (counted),
    the event after it is not synced before it, and nothing is counted undecodable."""
    s = _private(stack_settings)
    await ensure_topics(s)
    aid = f"{s.events_topic[:11]}-rstop"
    codec = EventCodec()
    first = decide(None, Create(assessment_id=aid, request={"r": 1}), NOW)
    second = decide(evolve(None, first), Start(assessment_id=aid), NOW)
    body_value, headers = codec.encode(first)
    unknown = b"\x00\x00\x00\x30\x39" + body_value[10:]
    await _produce(s, s.events_topic, [(aid.encode(), unknown, headers), (aid.encode(), *codec.encode(second))])
    stop = asyncio.Event()
    async with ReverseSync(s, group_id=f"{s.processor_group}-rstop") as sync:
        task = asyncio.create_task(sync.run(stop))
        try:
            await eventually(lambda: _now(sync), lambda x: x.stats.unresolvable >= 1, timeout_s=60,
                             what="the reverse sync stopping at the unresolvable event")
        finally:
            stop.set()
            await task
    assert (sync.stats.emitted, sync.stats.undecodable) == (0, 0)
    names = {f.name for f in sync.stats.metric_families()}
    assert "assessment_store_reverse_sync_unresolvable_schema_total" in names


# --- the independent decoder -------------------------------------------------------------------

def _plain_decode(value: bytes, schemas_by_fp: dict[str, str], registry_url: str | None) -> dict[str, Any]:
    """Decode one record with fastavro alone, by the rules of docs/events.md (no store code)."""
    if value[:2] == b"\xc3\x01":
        schema_json, body = schemas_by_fp[value[2:10].hex()], value[10:]
    elif value[0] == 0:
        assert registry_url is not None
        with urllib.request.urlopen(f"{registry_url}/schemas/ids/{int.from_bytes(value[1:5], 'big')}",  # noqa: S310
                                    timeout=5) as answer:
            schema_json, body = json.loads(answer.read())["schema"], value[5:]
    else:
        raise AssertionError(f"neither format: {value[:10]!r}")
    record = fastavro.schemaless_reader(io.BytesIO(body), fastavro.parse_schema(json.loads(schema_json)))
    assert isinstance(record, dict)
    return record


@pytest.mark.parametrize("mode", ["single-object", "confluent"])
async def test_plain_fastavro_decodes_what_the_store_wrote(stack_settings: Settings, registry: MiniSchemaRegistry,
                                                           mode: str) -> None:
    """Commands, events and outcomes on the topics decode with fastavro given only the wire rules, the schemas
    topic (by fingerprint) or the registry (by id), and say what was sent."""
    s = _private(stack_settings, registry.url if mode == "confluent" else None)
    aid = f"{s.events_topic[:11]}-ind"
    sent = [Create(assessment_id=aid, command_id=f"{aid}-c1", request={"who": "plain"}),
            Start(assessment_id=aid, command_id=f"{aid}-c2"),
            Create(assessment_id=aid, command_id=f"{aid}-c3", request={"again": 1}),  # rejected: an outcome record
            Complete(assessment_id=aid, command_id=f"{aid}-c4", result={"score": 9}, duration_ms=12)]
    async with _processor(s) as proc:
        sender = CommandSender(s)
        try:
            for cmd in sent:
                await sender.send(CommandEnvelope(cmd, NOW, EventSource.STORE))
        finally:
            await sender.stop()
        await eventually(lambda: _now(proc), lambda p: p.stats.accepted + p.stats.rejected >= 4, timeout_s=60,
                         what="all four commands handled")
    by_fp = {r.key.decode(): r.value.decode() for r in await _records(s, schemas_topic(s), 1) if r.key and r.value}
    url = registry.url if mode == "confluent" else None
    decoded: dict[str, list[dict[str, Any]]] = {}
    for topic in (s.commands_topic, s.events_topic, s.outcomes_topic):
        raw = [r for r in await _records(s, topic) if r.value]  # fence records have no value
        assert raw, topic
        firsts = {r.value[:1] for r in raw}  # type: ignore[index]
        assert firsts == ({b"\x00"} if url else {b"\xc3"}), (topic, [(r.value[:12], r.headers) for r in raw])
        decoded[topic] = [_plain_decode(r.value, by_fp, url) for r in raw]  # type: ignore[arg-type]
    assert [c["command_id"] for c in decoded[s.commands_topic]] == [f"{aid}-c{i}" for i in range(1, 5)]
    assert decoded[s.commands_topic][0]["body"]["request_json"] == '{"who":"plain"}'
    events = decoded[s.events_topic]
    assert [(e["version"], e["type"], e["causation_id"]) for e in events] == [
        (1, "AssessmentCreated", f"{aid}-c1"), (2, "AssessmentStarted", f"{aid}-c2"),
        (3, "AssessmentCompleted", f"{aid}-c4")]
    assert json.loads(events[2]["payload"]["result_json"]) == {"score": 9}
    [rejection] = decoded[s.outcomes_topic]
    assert (rejection["command_id"], rejection["accepted"], rejection["error_type"]) == (
        f"{aid}-c3", False, "InvalidTransition")
    if url:
        for topic in (s.commands_topic, s.events_topic, s.outcomes_topic):
            subject = registry_subject(topic)
            assert registry.state.subjects[subject] and registry.state.config[subject] == "FULL_TRANSITIVE"
