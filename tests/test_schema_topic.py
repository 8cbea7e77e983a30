"""Writer schemas on the schemas topic: published by the writers, resolved by the projector, and a
record whose schema cannot be resolved stopping its partition instead of being skipped."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from assessment_store import AssessmentStore, Settings
from assessment_store.core import Created, Event, Payload, Started, evolve
from assessment_store.projections import Projector
from assessment_store.schemas import CommandCodec, EventCodec, OutcomeCodec
from assessment_store.streams import kafka_client_options, read_schemas, schemas_topic
from assessment_store.testing import encode_with_newer_writer, eventually, newer_event_writer, projected_event_count

NOW = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)


def _rec(topic: str, partition: int, offset: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, partition, offset, 0, 0, b"k", value, None, 1, len(value), [("type", b"x")])


def test_an_unresolvable_record_stops_its_partition_and_a_corrupt_one_is_an_anomaly() -> None:
    """Decoding a batch: the partition stops before the unresolvable record (offset kept), others fold on."""
    settings = Settings()
    p = Projector(settings)  # its decoding only: no consumer, no pool
    codec = EventCodec()
    newer, prefix = newer_event_writer()
    t = settings.events_topic
    ok = [codec.encode(Event(f"u-{i}", 1, Started(), NOW, NOW))[0] for i in range(4)]
    unknown = encode_with_newer_writer(newer, prefix, Event("u-x", 1, Created({"a": 1}), NOW, NOW))
    corrupt = ok[0][:12]
    records = {
        TopicPartition(t, 0): [_rec(t, 0, 10, ok[0]), _rec(t, 0, 11, unknown), _rec(t, 0, 12, ok[1])],
        TopicPartition(t, 1): [_rec(t, 1, 5, corrupt), _rec(t, 1, 6, ok[2])],
        TopicPartition(t, 2): [_rec(t, 2, 7, unknown), _rec(t, 2, 8, ok[3])],
    }
    batch, stats = p._decode(records)
    stopped = batch.unresolved[TopicPartition(t, 0)]
    assert (stopped.topic, stopped.partition, stopped.offset) == (t, 0, 11)
    assert stopped.fingerprint == prefix[2:].hex()
    assert batch.next_offsets[TopicPartition(t, 0)] == 11  # the record before it commits, nothing after
    assert TopicPartition(t, 2) in batch.unresolved and TopicPartition(t, 2) not in batch.next_offsets
    assert batch.next_offsets[TopicPartition(t, 1)] == 7 and stats.undecodable == 1  # corrupt: today's anomaly path
    assert [ev.assessment_id for _, ev in batch.events] == ["u-0", "u-2"]
    assert stats.unresolvable == 2
    assert [a.kind for a in batch.anomalies] == ["undecodable"]


@pytest.mark.stack
async def test_the_stack_publishes_every_writer_schema(stack_settings: Settings) -> None:
    """After the processor started and a command was sent, the schemas topic holds the events', outcomes' and commands' schemas."""
    from assessment_store.streams import CommandSender
    from assessment_store.core import CommandEnvelope, EventSource, Create

    sender = CommandSender(stack_settings)
    try:
        await sender.send(CommandEnvelope(Create(assessment_id="schemas-pub-1", command_id="schemas-pub-c1",
                                                 request={"x": 1}), NOW, EventSource.STORE))
    finally:
        await sender.stop()
    wanted = {EventCodec().fingerprint, OutcomeCodec().avro.fingerprint, CommandCodec().avro.fingerprint}
    found = await eventually(lambda: read_schemas(stack_settings, "admin"), lambda s: wanted <= s.keys(),
                             timeout_s=30, what="every writer schema on the schemas topic")
    assert json.loads(found[EventCodec().fingerprint])["name"] == "AssessmentEvent"


@pytest.mark.stack
async def test_rolling_upgrade_a_newer_writer_is_projected_through_the_schemas_topic(stack_settings: Settings) -> None:
    """Events written with a newer schema (new optional field) are folded by the running projector: none skipped, and
    the projected state is the fold of those events (what a reader knowing the newer schema rebuilds)."""
    s = stack_settings
    newer, prefix = newer_event_writer()
    producer = AIOKafkaProducer(**kafka_client_options(s, "admin"), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(schemas_topic(s), json.dumps(newer).encode(), key=prefix[2:].hex().encode())
        payloads: tuple[Payload, ...] = (Created({"n": 1}), Started("w"))
        events = [Event("rollup-1", v, payload, NOW, NOW) for v, payload in enumerate(payloads, start=1)]
        for event in events:
            value = encode_with_newer_writer(newer, prefix, event)
            await producer.send_and_wait(s.events_topic, value, key=b"rollup-1", headers=[("type", b"x")])
    finally:
        await producer.stop()
    await eventually(lambda: projected_event_count(s, "rollup"), lambda c: c == 2, timeout_s=60,
                     what="both events of the newer writer projected")
    folded = None
    for event in events:
        folded = evolve(folded, event)
    async with AssessmentStore(s) as store:
        assert await store.get_state("rollup-1") == folded
