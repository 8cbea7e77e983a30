"""Sends commands to the commands topic (the client side of the single writer)."""

from __future__ import annotations

from aiokafka.structs import RecordMetadata

from assessment_store.core import CommandEnvelope, Settings, ValidationError
from assessment_store.schemas import CommandCodec

from ._kafka import KeyedProducer

__all__ = ["CommandSender"]


class CommandSender(KeyedProducer):
    """Idempotent, acks=all producer of commands keyed by assessment id.

    The key decides the partition, and so which processor instance owns the command: every
    command of one assessment reaches the same single writer, in the order it was sent.
    """

    principal = "client"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._codec = CommandCodec()
        self.writer_schemas = {settings.commands_topic: self._codec.avro}

    async def send(self, envelope: CommandEnvelope) -> RecordMetadata:
        c = envelope.command
        # Started (schemas published, registered with the registry if any) before the first encoding:
        # in registry mode the codec writes the Confluent format only once it has its schema id.
        if self._producer is None:
            await self.start()
        try:
            value, headers = self._codec.encode(envelope)
        except (ValueError, TypeError, OverflowError) as e:
            # validate_command runs first and should leave nothing unencodable; should something slip
            # through, the caller still gets the store's typed error rather than a bare driver one.
            raise ValidationError("command", f"cannot be encoded as Avro: {type(e).__name__}: {e}") from e
        return await self._send(f"sending command {c.command_id!r} for {c.assessment_id!r}",
                                self._settings.commands_topic, c.assessment_id, value, headers)
