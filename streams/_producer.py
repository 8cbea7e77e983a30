"""Appends events to the events topic."""

from __future__ import annotations


from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from assessment_store._config import Settings
from assessment_store._lifecycle import AsyncLifecycle
from assessment_store._model import Event
from schemas import EventCodec

from ._kafka import idempotent_producer, translate_kafka_errors

__all__ = ["EventProducer"]


class EventProducer(AsyncLifecycle):
    """Idempotent, acks=all producer of ``Event`` records keyed by assessment id.

    Keying by assessment id puts all events of one assessment on one partition, which is the
    only ordering Kafka guarantees; the projector relies on it to see versions in order.
    ``enable_idempotence`` makes the broker drop the duplicates a producer retry would create,
    so a network blip never yields two copies of one event at different offsets.
    """

    def __init__(self, settings: Settings, codec: EventCodec | None = None) -> None:
        self._settings = settings
        self._codec = codec or EventCodec()
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._producer is not None:
            return
        producer = idempotent_producer(self._settings)
        with translate_kafka_errors(f"starting producer for {self._settings.kafka_bootstrap}"):
            await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()



    async def append(self, event: Event) -> RecordMetadata:
        if self._producer is None:
            await self.start()
        assert self._producer is not None
        value, headers = self._codec.encode(event)
        with translate_kafka_errors(f"appending {event.type.value} v{event.version} of {event.assessment_id!r}"):
            return await self._producer.send_and_wait(
                self._settings.events_topic,
                value=value,
                key=event.assessment_id.encode(),
                headers=headers,
                timestamp_ms=int(event.recorded_at.timestamp() * 1000),
            )
