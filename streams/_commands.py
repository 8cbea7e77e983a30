"""Sends commands to the commands topic (the client side of the single writer)."""

from __future__ import annotations


from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from assessment_store._config import Settings
from assessment_store._lifecycle import AsyncLifecycle
from assessment_store._model import CommandEnvelope
from schemas import CommandCodec

from ._kafka import idempotent_producer, translate_kafka_errors

__all__ = ["CommandSender"]


class CommandSender(AsyncLifecycle):
    """Idempotent, acks=all producer of commands keyed by assessment id.

    The key decides the partition, and so which processor instance owns the command: every
    command of one assessment reaches the same single writer, in the order it was sent.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._codec = CommandCodec()
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._producer is not None:
            return
        producer = idempotent_producer(self._settings)
        with translate_kafka_errors(f"starting command producer for {self._settings.kafka_bootstrap}"):
            await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()



    async def send(self, envelope: CommandEnvelope) -> RecordMetadata:
        if self._producer is None:
            await self.start()
        assert self._producer is not None
        value, headers = self._codec.encode(envelope)
        c = envelope.command
        with translate_kafka_errors(f"sending command {c.command_id!r} for {c.assessment_id!r}"):
            return await self._producer.send_and_wait(
                self._settings.commands_topic, value=value, key=c.assessment_id.encode(), headers=headers
            )
