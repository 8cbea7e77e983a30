"""The one place aiokafka errors become store errors, and the topics the store needs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError

from assessment_store._config import Settings
from assessment_store._errors import FencedOut, KafkaUnavailable
from assessment_store._lifecycle import AsyncLifecycle

__all__ = [
    "KeyedProducer", "close_producer", "committed_with_metadata",
    "TopicSpec", "admin_client", "ensure_topics", "idempotent_producer", "partition_counts", "store_topics",
    "topic_end_offsets", "translate_kafka_errors",
]

log = logging.getLogger("assessment_store.kafka")


@contextlib.contextmanager
def translate_kafka_errors(what: str) -> Iterator[None]:
    """aiokafka and socket failures -> ``KafkaUnavailable``; keeps aiokafka's ``retriable``."""
    try:
        yield
    except CommitFailedError as e:
        # The group rebalanced: this member's generation is gone (see streams/_fence.py).
        raise FencedOut(f"{what}: the consumer group rebalanced and refused this member's commit ({e.args[-1]})") from e
    except KafkaError as e:
        err = KafkaUnavailable(f"{what}: {type(e).__name__}: {e}")
        err.retriable = bool(getattr(e, "retriable", False))
        raise err from e
    except OSError as e:
        raise KafkaUnavailable(f"{what}: broker unreachable ({e})") from e


async def committed_with_metadata(consumer: AIOKafkaConsumer, tp: TopicPartition) -> tuple[int | None, str]:
    """The group's committed offset of ``tp`` (None if never committed) and its metadata string.
    ``AIOKafkaConsumer.committed`` drops the metadata, which holds the processor's fence epoch."""
    with translate_kafka_errors(f"reading the committed offset of {tp.topic}[{tp.partition}]"):
        found = await consumer._coordinator.fetch_committed_offsets([tp])  # noqa: SLF001 - no public way to the metadata
    meta = found.get(tp)
    if meta is None or meta.offset < 0:
        return None, meta.metadata if meta is not None else ""
    return int(meta.offset), str(meta.metadata or "")


def idempotent_producer(settings: Settings) -> AIOKafkaProducer:
    """The producer every writer of the log uses: acks=all (nothing is acknowledged before every
    in-sync replica has it) and idempotence (the broker drops the duplicate a retried send would
    create, and keeps one partition's records in send order)."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=0,
        max_request_size=4 * 1024 * 1024,
    )


async def close_producer(producer: AIOKafkaProducer, flush_timeout_s: float) -> None:
    """Stop ``producer``, delivering what it still buffers for at most ``flush_timeout_s``.

    aiokafka's ``stop`` flushes first and, with the broker gone, waits for ever. Whatever is still
    buffered then was never acknowledged: its senders were told so (a timeout), and re-sending by
    command id or re-processing from the uncommitted input offset is how it reaches the log, so
    dropping it here loses nothing that was promised."""
    try:
        await asyncio.wait_for(asyncio.shield(stop := asyncio.ensure_future(producer.stop())), flush_timeout_s)
    except TimeoutError:
        log.warning("Kafka producer: undelivered records after %g s, closing without them", flush_timeout_s)
        sender = producer._sender  # noqa: SLF001 - aiokafka has no public forced close
        if sender is not None:
            await sender.close()  # cancels the sender task: stop()'s flush wait then returns
        await stop


class KeyedProducer(AsyncLifecycle):
    """An idempotent producer behind the lifecycle every writer shares; subclasses say what they
    encode and where it goes."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._producer is not None:
            return
        producer = idempotent_producer(self._settings)
        with translate_kafka_errors(f"starting a producer for {self._settings.kafka_bootstrap}"):
            await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await close_producer(producer, self._settings.producer_flush_timeout_s)

    async def _send(
        self, what: str, topic: str, key: str, value: bytes, headers: list[tuple[str, bytes]],
        timestamp_ms: int | None = None,
    ) -> RecordMetadata:
        await self.start()
        assert self._producer is not None
        with translate_kafka_errors(what):
            return await self._producer.send_and_wait(
                topic, value=value, key=key.encode(), headers=headers, timestamp_ms=timestamp_ms
            )


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def store_topics(settings: Settings) -> list[TopicSpec]:
    forever = {"retention.ms": "-1", "retention.bytes": "-1"}
    return [
        # The log of record: never expires; rebuilds and time travel read it from offset 0.
        TopicSpec(settings.events_topic, settings.partitions, {**forever, "min.insync.replicas": "1"}),
        # Commands and outcomes must have the events topic's partition count: the processor
        # owning command partition p writes events and outcomes to partition p of each.
        TopicSpec(settings.commands_topic, settings.partitions, {"retention.ms": str(7 * 24 * 3600 * 1000)}),
        # Outcomes are the idempotency record: kept as long as the events.
        TopicSpec(settings.outcomes_topic, settings.partitions, forever),
        TopicSpec(settings.commands_topic + ".dlq", 1, forever),
        TopicSpec(settings.legacy_topic, settings.partitions, forever),
        TopicSpec(settings.legacy_topic + ".dlq", 1, forever),
    ]


@contextlib.asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=15000)
    with translate_kafka_errors(f"connecting to {settings.kafka_bootstrap}"):
        await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> list[str]:
    """Create the missing topics; returns the names created. Existing topics are left as they are."""
    specs = specs if specs is not None else store_topics(settings)
    created: list[str] = []
    async with admin_client(settings) as admin:
        with translate_kafka_errors("creating topics"):
            existing = set(await admin.list_topics())
            missing = [s for s in specs if s.name not in existing]
            for spec in missing:
                try:
                    await admin.create_topics(
                        [NewTopic(spec.name, spec.partitions, settings.replication_factor, topic_configs=spec.config)]
                    )
                    created.append(spec.name)
                except TopicAlreadyExistsError:
                    pass  # another process created it between list and create
    return created


async def partition_counts(settings: Settings, topics: list[str]) -> dict[str, int]:
    async with admin_client(settings) as admin:
        with translate_kafka_errors("describing topics"):
            described = await admin.describe_topics(topics)
    return {d["topic"]: len(d["partitions"]) for d in described}


async def topic_end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Partition -> end offset (the offset the next record will get); empty when the topic does not exist."""
    partitions = range((await partition_counts(settings, [topic])).get(topic, 0))
    if not partitions:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    with translate_kafka_errors(f"reading the end offsets of {topic}"):
        await consumer.start()
        try:
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        finally:
            await consumer.stop()
    return {tp.partition: off for tp, off in ends.items()}
