"""Sends commands to the commands topic (the client side of the single writer)."""

from __future__ import annotations

import re

from aiokafka.structs import RecordMetadata

from assessment_store.core import CommandEnvelope, Settings, ValidationError
from assessment_store.schemas import CommandCodec

from ._kafka import KeyedProducer

__all__ = ["REPLY_CHANNEL_PREFIX", "REPLY_HEADER", "CommandSender", "is_reply_channel"]

REPLY_HEADER = "reply-to"
"""A command's header naming the PostgreSQL NOTIFY channel of the client waiting for it. The
processor copies it onto the command's event, and the projector notifies that channel, and no
other, with the assessment's stored row (``projections.ChangeListener``). Commands nobody waits
for (the bridge's, an import's) carry none and cost nothing there."""
REPLY_CHANNEL_PREFIX = "assessment_store_reply_"
_REPLY_CHANNEL = re.compile(re.escape(REPLY_CHANNEL_PREFIX) + "[0-9a-f]{16}")


def is_reply_channel(name: str) -> bool:
    """A reply channel as clients name theirs: the prefix and 16 hex digits. Anything else found in
    a header is ignored (the header is the client's, so it is checked before it names a channel)."""
    return _REPLY_CHANNEL.fullmatch(name) is not None


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

    async def send(self, envelope: CommandEnvelope, *, reply_to: str | None = None) -> RecordMetadata:
        """Append ``envelope``; ``reply_to``: the NOTIFY channel its caller listens on (``REPLY_HEADER``)."""
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
        if reply_to is not None:
            headers.append((REPLY_HEADER, reply_to.encode()))
        return await self._send(f"sending command {c.command_id!r} for {c.assessment_id!r}",
                                self._settings.commands_topic, c.assessment_id, value, headers)
