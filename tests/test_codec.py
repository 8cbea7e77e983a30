"""Avro round trips of every event type, and clear errors for foreign bytes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from assessment_store import CodecError, EventSource
from assessment_store._model import (
    Cancelled, Completed, Created, Event, Failed, Payload, ProgressUpdated, Retried, Started,
)
from schemas import EventCodec

NOW = datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC)
PAYLOADS: list[Payload] = [
    Created({"subject": "ü", "n": [1, 2.5, None]}, 5000, 3),
    Created("just a string"),
    Started("w-1"),
    ProgressUpdated(42, "halfway"),
    Completed({"score": 7}, 1234),
    Completed(None),
    Failed("boom", True, 10),
    Cancelled(None),
    Retried(2),
]


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: type(p).__name__)
def test_round_trip_every_payload(payload: Payload) -> None:
    """encode then decode returns an equal event, and the headers name type and schema."""
    codec = EventCodec()
    ev = Event("id-1", 3, payload, NOW, NOW, EventSource.LEGACY_BRIDGE, correlation_id="c", causation_id="k")
    value, headers = codec.encode(ev)
    h = dict(headers)
    assert h["type"].decode() == ev.type.value
    assert h["schema-fingerprint"].decode() == codec.fingerprint
    assert codec.decode(value, headers) == ev


def test_foreign_bytes_raise_codec_error() -> None:
    """Garbage, a missing header or an unknown fingerprint each raise CodecError saying why."""
    codec = EventCodec()
    value, headers = codec.encode(Event("a", 1, Started(), NOW, NOW))
    with pytest.raises(CodecError, match="missing 'schema-fingerprint'"):
        codec.decode(value, [])
    with pytest.raises(CodecError, match="unknown schema fingerprint"):
        codec.decode(value, [("schema-fingerprint", b"0000")])
    with pytest.raises(CodecError):
        codec.decode(b"\xff\xfe\x00", headers)
    with pytest.raises(CodecError, match="empty"):
        codec.decode(b"", headers)
