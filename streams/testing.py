"""Test helpers of the streams package, shipped for the tests of services that read the log.

``EventProducer`` appends events straight to the events topic, around the command processor (the
single writer): a test uses it to put a duplicate, a gap, a poisoned or a forged event in front of
a reader. Nothing in the store writes events this way.
"""

from __future__ import annotations

from aiokafka.structs import RecordMetadata

from assessment_store.core import Event, Settings
from assessment_store.schemas import EventCodec

from ._kafka import KeyedProducer, Principal

__all__ = ["EventProducer"]


class EventProducer(KeyedProducer):
    """Idempotent, acks=all producer of ``Event`` records keyed by assessment id.

    Keying by assessment id puts all events of one assessment on one partition, which is the
    only ordering Kafka guarantees; the projector relies on it to see versions in order.
    ``enable_idempotence`` makes the broker drop the duplicates a producer retry would create,
    so a network blip never yields two copies of one event at different offsets.
    """

    principal = "processor"  # only the processor writes the log of record

    def __init__(self, settings: Settings, codec: EventCodec | None = None, *,
                 principal: Principal | None = None) -> None:
        super().__init__(settings, principal=principal)
        self._codec = codec or EventCodec()
        self.writer_schemas = {settings.events_topic: self._codec.avro}

    async def append(self, event: Event) -> RecordMetadata:
        await self.start()  # before encoding: registry mode needs the schema id first
        value, headers = self._codec.encode(event)
        return await self._send(
            f"appending {event.type.value} v{event.version} of {event.assessment_id!r}",
            self._settings.events_topic, event.assessment_id, value, headers,
            timestamp_ms=int(event.recorded_at.timestamp() * 1000),
        )
