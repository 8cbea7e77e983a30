"""State as of a past moment, computed from the log (never from the projection).

Kafka record timestamps are the events' ``recorded_at`` (the processor sets them), so "as of time
T" means: every record of the events topic with a timestamp <= T. Within a partition records are
in offset order and the processor stamps them in that order, so the prefix up to the first record
after T is exactly that set (``offsets_for_times`` finds its end). Reading from offset 0, every
fence is seen, so records a fenced processor wrote are skipped as every reader skips them
(``streams/_fence.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord

from assessment_store.core import (
    Assessment,
    Cancelled,
    CodecError,
    Completed,
    Created,
    Failed,
    Payload,
    Retried,
    Settings,
    Started,
    State,
    ValidationError,
    evolve,
)
from assessment_store.schemas import EventCodec
from assessment_store.streams import (
    LogFence,
    Verdict,
    kafka_client_options,
    partition_counts,
    translate_kafka_errors,
)

__all__ = ["counts_at", "state_at"]

_STATE_AFTER: dict[type[Payload], State] = {
    Created: State.PENDING, Started: State.PROCESSING, Completed: State.COMPLETED,
    Failed: State.FAILED, Cancelled: State.CANCELLED, Retried: State.PENDING,
}


async def _ends_at(consumer: AIOKafkaConsumer, partitions: list[TopicPartition], at: datetime) -> dict[TopicPartition, int]:
    """Per partition, the offset of the first record after ``at`` (the end offset if none)."""
    found = await consumer.offsets_for_times({tp: int(at.timestamp() * 1000) + 1 for tp in partitions})
    ends = await consumer.end_offsets(partitions)
    return {tp: (found[tp].offset if found.get(tp) is not None else ends[tp]) for tp in partitions}


async def _read(
    consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Yield the records of each partition from its beginning up to (excluding) its end, except
    fence records and records written after a later owner's fence."""
    fence = LogFence()
    todo = {tp: end for tp, end in ends.items() if end > 0}
    consumer.assign(list(todo))
    if not todo:
        return
    await consumer.seek_to_beginning(*todo)
    while todo:
        batch = await consumer.getmany(*todo, timeout_ms=1000)
        for tp, recs in batch.items():
            for rec in recs:
                if rec.offset < todo.get(tp, 0) and fence.judge(tp, rec.headers)[0] is Verdict.ACCEPTED:
                    yield rec
            if tp in todo and await consumer.position(tp) >= todo[tp]:
                del todo[tp]
                consumer.pause(tp)
        for tp in list(todo):
            if await consumer.position(tp) >= todo[tp]:
                del todo[tp]


def _consumer(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(**kafka_client_options(settings, "dashboard"), group_id=None, enable_auto_commit=False,
                            isolation_level="read_committed", auto_offset_reset="earliest")


async def state_at(
    settings: Settings, assessment_id: str, *, at: datetime | None = None, offset: int | None = None
) -> Assessment | None:
    """One assessment as of time ``at``, or as of (and including) ``offset`` of its partition."""
    if (at is None) == (offset is None):
        raise ValidationError("at/offset", "give exactly one of a time and an offset")
    codec = EventCodec()
    consumer = _consumer(settings)
    with translate_kafka_errors(f"reading the history of {assessment_id!r}"):
        await consumer.start()
        try:
            parts = list(range((await partition_counts(settings, [settings.events_topic], principal="dashboard"))[settings.events_topic]))
            # Same partitioner as the producers: the assessment's events are all in this one.
            p = DefaultPartitioner()(assessment_id.encode(), parts, parts)
            tp = TopicPartition(settings.events_topic, p)
            if offset is not None:
                end = {tp: offset + 1}
            else:
                assert at is not None
                end = await _ends_at(consumer, [tp], at)
            state: Assessment | None = None
            async for rec in _read(consumer, end):
                if rec.key != assessment_id.encode():
                    continue
                try:
                    ev = codec.decode(rec.value, rec.headers)
                except CodecError:
                    continue  # counted by the projector's anomalies; not part of any state
                if ev.version == (state.version if state else 0) + 1:
                    state = evolve(state, ev)
            return state
        finally:
            await consumer.stop()


async def counts_at(settings: Settings, at: datetime) -> dict[State, int]:
    """How many assessments were in each state at time ``at``. Memory: one small entry per id."""
    codec = EventCodec()
    consumer = _consumer(settings)
    states: dict[bytes, tuple[int, State]] = {}
    with translate_kafka_errors("reading the events topic"):
        await consumer.start()
        try:
            count = (await partition_counts(settings, [settings.events_topic], principal="dashboard"))[settings.events_topic]
            parts = [TopicPartition(settings.events_topic, p) for p in range(count)]
            async for rec in _read(consumer, await _ends_at(consumer, parts, at)):
                try:
                    ev = codec.decode(rec.value, rec.headers)
                except CodecError:
                    continue
                key = rec.key or b""
                version = states[key][0] if key in states else 0
                if ev.version == version + 1 and (version > 0 or isinstance(ev.payload, Created)):
                    new = _STATE_AFTER.get(type(ev.payload))
                    states[key] = (ev.version, new if new is not None else states[key][1])
        finally:
            await consumer.stop()
    counts = {s: 0 for s in State}
    for _v, st in states.values():
        counts[st] += 1
    return counts
