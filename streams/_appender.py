"""Pipelined appends of commands (and dead letters): queue many, then wait for all their acks.

``streams.CommandSender`` waits for each command's acknowledgement before the next; the bridge and
the import append thousands per batch, so they fill Kafka record batches themselves (one open
batch per partition, shipped when full or at ``flush``) and wait once per batch of input.
Measured on the local broker, ``producer.send()`` costs ~26 us per record and a hand-filled
``send_batch`` ~7.5 us, which is a quarter of the bridge's whole per-message budget.

Routing is exactly ``CommandSender``'s: the key is the assessment id and the partition is
aiokafka's ``DefaultPartitioner`` (murmur2 of the key over the partitions sorted by id, which is
also the Java client's and the Node tap's choice), so every command of one assessment reaches
the same command partition, hence the same single writer. Order is kept: records of a partition
go into its open batch in call order, and a full batch is shipped before the next one is opened;
the producer is idempotent (acks=all), so a retried batch is neither duplicated nor reordered.
"""

from __future__ import annotations

import asyncio
import functools

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from assessment_store.core import CommandEnvelope, KafkaUnavailable, Settings
from assessment_store.schemas import CommandCodec
from ._kafka import kafka_client_options, translate_kafka_errors
from ._kafka import publish_schemas, start_kafka_client

__all__ = ["Appender"]

_partitioner = DefaultPartitioner()


@functools.lru_cache(maxsize=65536)
def _partition_of(key: bytes, partitions: tuple[int, ...]) -> int:
    """murmur2 is pure Python here; an assessment's commands come in runs, so its partition is cached."""
    chosen: int = _partitioner(key, list(partitions), list(partitions))
    return chosen


class Appender:
    """One idempotent producer; ``command``/``record`` queue a record, ``flush`` ships and waits for the acks."""

    def __init__(self, settings: Settings, *, linger_ms: int = 5) -> None:
        self._settings = settings
        self._codec = CommandCodec()
        self._linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[str, tuple[int, ...]] = {}
        self._open: dict[tuple[str, int], BatchBuilder] = {}
        self._in_flight: list[asyncio.Future[object]] = []

    async def start(self) -> None:
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(
            **kafka_client_options(self._settings, "bridge"), acks="all", enable_idempotence=True,
            linger_ms=self._linger_ms, max_batch_size=256 * 1024, max_request_size=4 * 1024 * 1024,
        )
        await start_kafka_client(producer, self._settings, "bridge",
                                 f"starting the bridge's producer for {self._settings.kafka_bootstrap}")
        try:
            await publish_schemas(self._settings, producer, {self._settings.commands_topic: self._codec.avro})
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        # Records not flushed are abandoned on purpose: their input was not committed, so it is read again.
        self._open.clear()
        self._in_flight.clear()
        if producer is not None:
            await producer.stop()

    @property
    def _p(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("Appender is not started")
        return self._producer

    def encode(self, envelope: CommandEnvelope) -> tuple[bytes, list[tuple[str, bytes]]]:
        """The command's record value and headers; raises whatever the Avro encoder raises. Only once
        started: in registry mode the codec has its schema id (the Confluent format) from then on."""
        self._p  # noqa: B018 - raises when not started
        return self._codec.encode(envelope)

    async def command(self, envelope: CommandEnvelope,
                      encoded: tuple[bytes, list[tuple[str, bytes]]] | None = None) -> None:
        """Queue a command (``encoded``: its ``encode`` result, when the caller encoded it already)."""
        value, headers = encoded if encoded is not None else self.encode(envelope)
        await self.record(self._settings.commands_topic, value, envelope.command.assessment_id.encode(), headers)

    async def record(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        partitions = self._partitions.get(topic)
        if partitions is None:
            with translate_kafka_errors(f"reading the partitions of {topic}"):
                partitions = self._partitions[topic] = tuple(sorted(await self._p.partitions_for(topic)))
            if not partitions:
                raise KafkaUnavailable(f"topic {topic!r} has no partitions (does it exist?)")
        partition = _partition_of(key, partitions) if key is not None else _partitioner(None, list(partitions), [])
        tp = (topic, partition)
        batch = self._open.get(tp)
        if batch is None:
            batch = self._open[tp] = self._p.create_batch()
        if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
            await self._ship(tp)  # full: it goes before the record that did not fit (order is kept)
            batch = self._open[tp] = self._p.create_batch()
            # An empty batch always takes its first record, whatever its size.
            batch.append(key=key, value=value, timestamp=None, headers=headers)

    async def _ship(self, tp: tuple[str, int]) -> None:
        batch = self._open.pop(tp)
        batch.close()
        with translate_kafka_errors(f"sending a batch to {tp[0]}/{tp[1]}"):
            self._in_flight.append(await self._p.send_batch(batch, tp[0], partition=tp[1]))

    async def flush(self) -> None:
        """Ship every open batch and wait until all are acknowledged (acks=all)."""
        for tp in list(self._open):
            await self._ship(tp)
        in_flight, self._in_flight = self._in_flight, []
        with translate_kafka_errors("waiting for acknowledgements"):
            await asyncio.gather(*in_flight)
