"""Avro round trips of every event type, and clear errors for foreign bytes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from assessment_store import CodecError, EventSource
from assessment_store.core import (
    Cancelled, Completed, Created, Event, Failed, Payload, ProgressUpdated, Retried, Started,
)
from assessment_store.schemas import EventCodec

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
    """encode then decode returns an equal event; the value is a single object naming the schema, the header the type."""
    codec = EventCodec()
    ev = Event("id-1", 3, payload, NOW, NOW, EventSource.LEGACY_BRIDGE, correlation_id="c", causation_id="k")
    value, headers = codec.encode(ev)
    h = dict(headers)
    assert h["type"].decode() == ev.type.value
    assert value[:2] == b"\xc3\x01" and value[2:10].hex() == codec.fingerprint
    assert "schema-fingerprint" not in h
    assert codec.decode(value, headers) == ev


def test_foreign_bytes_raise_codec_error() -> None:
    """Garbage, a missing marker and header, or an unknown fingerprint each raise CodecError saying why."""
    codec = EventCodec()
    value, headers = codec.encode(Event("a", 1, Started(), NOW, NOW))
    with pytest.raises(CodecError, match="neither a single object"):
        codec.decode(value[10:], [])
    with pytest.raises(CodecError, match="unknown writer schema"):
        codec.decode(value[10:], [("schema-fingerprint", b"0000")])
    with pytest.raises(CodecError):
        codec.decode(b"\xff\xfe\x00", headers)
    with pytest.raises(CodecError, match="empty"):
        codec.decode(b"", headers)


def test_a_command_written_with_the_previous_schema_still_decodes() -> None:
    """A Fail written with command schema v1 (no duration_ms) decodes with the current schema, duration None."""
    import io
    import json

    import fastavro
    from fastavro.schema import fingerprint, to_parsing_canonical_form

    from assessment_store.core import CommandEnvelope, Fail
    from assessment_store.schemas import CommandCodec
    from assessment_store.schemas import SCHEMA_DIR

    v1 = fastavro.parse_schema(json.loads((SCHEMA_DIR / "history" / "assessment_command.v1.avsc").read_text()))
    codec = CommandCodec()
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    record = {"command_id": "c-1", "assessment_id": "a-1", "type": "Fail", "expected_version": None, "issued_at": now,
              "source": "legacy-bridge", "correlation_id": None,
              "body": ("io.assessmentstore.commands.Fail", {"error": "boom", "retryable": False})}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, v1, record)
    old_fp = fingerprint(to_parsing_canonical_form(v1), "CRC-64-AVRO")
    current_value, _ = codec.encode(CommandEnvelope(Fail(assessment_id="a-1", command_id="c-2", error="x"), now,
                                                    EventSource.STORE))
    assert current_value[2:10].hex() != old_fp
    env = codec.decode(buf.getvalue(), [("schema-fingerprint", old_fp.encode())])
    assert env.command == Fail(assessment_id="a-1", command_id="c-1", error="boom", duration_ms=None)
    assert env.source is EventSource.LEGACY_BRIDGE


def test_a_command_envelope_keeps_its_origin_time() -> None:
    """occurred_at (a legacy emission's time) survives the commands topic; None stays None."""
    from assessment_store.core import CommandEnvelope, Start
    from assessment_store.schemas import CommandCodec

    codec = CommandCodec()
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    legacy = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    for occurred in (legacy, None):
        env = CommandEnvelope(Start(assessment_id="a-1", command_id="c-1"), now, EventSource.LEGACY_BRIDGE, occurred)
        assert codec.decode(*codec.encode(env)) == env
