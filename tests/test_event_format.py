"""The wire format (Avro single-object encoding), the old header format's migration path, and the
schemas' compatibility with their history (docs/events.md)."""

from __future__ import annotations

import copy
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

from assessment_store.core import (
    CodecError, CommandEnvelope, Create, Event, EventSource, Failed, Outcome, Started, UnresolvableSchema,
)
from assessment_store.schemas import (
    SCHEMA_DIR, CommandCodec, EventCodec, OutcomeCodec, crc64_avro, incompatibilities, record_fingerprint,
)

NOW = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
CURRENT = sorted(SCHEMA_DIR.glob("*.avsc"))
HISTORY = sorted((SCHEMA_DIR / "history").glob("*.avsc"))


def _old_encode(schema_file: str, record: dict[str, Any], type_name: str) -> tuple[bytes, list[tuple[str, bytes]]]:
    """What the previous codec wrote: schemaless Avro, the fingerprint (hex) in a header."""
    parsed = fastavro.parse_schema(json.loads((SCHEMA_DIR / schema_file).read_text()))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    fp = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
    return buf.getvalue(), [("type", type_name.encode()), ("schema-fingerprint", fp.encode()),
                            ("content-type", b"application/vnd.assessment-store.event+avro")]


def _history_pairs() -> list[tuple[Path, Path]]:
    return [(cur, old) for cur in CURRENT for old in HISTORY if old.name.split(".v")[0] == cur.stem]


def test_value_is_an_avro_single_object_any_library_decodes() -> None:
    """The value is C3 01, the 8-byte little-endian CRC-64-AVRO of the canonical schema, then plain Avro binary."""
    codec = EventCodec()
    ev = Event("a-1", 1, Started("w"), NOW, NOW, EventSource.STORE, event_id="e-1")
    value, headers = codec.encode(ev)
    schema = fastavro.parse_schema(json.loads((SCHEMA_DIR / "assessment_event.avsc").read_text()))
    canonical = to_parsing_canonical_form(schema)
    assert value[:2] == b"\xc3\x01"
    assert value[2:10] == crc64_avro(canonical.encode()).to_bytes(8, "little")
    assert value[2:10].hex() == fingerprint(canonical, "CRC-64-AVRO")  # fastavro agrees
    plain = fastavro.schemaless_reader(io.BytesIO(value[10:]), schema)
    assert isinstance(plain, dict) and plain["assessment_id"] == "a-1" and plain["type"] == "AssessmentStarted"
    assert dict(headers)["type"] == b"AssessmentStarted"
    assert record_fingerprint(value, headers) == codec.fingerprint


def test_crc64_avro_matches_the_specification_for_a_primitive() -> None:
    """The fingerprint of the schema "int" is the Avro specification's (8f 5c 39 3f 1a d5 75 72 as bytes)."""
    assert crc64_avro(b'"int"').to_bytes(8, "little").hex() == "8f5c393f1ad57572"


def test_records_of_the_old_header_format_still_decode() -> None:
    """An event, a command and an outcome written by the old codec (header fingerprint) decode with the new reader."""
    ev = Event("a-2", 2, Failed("boom", True, 5), NOW, NOW, EventSource.LEGACY_BRIDGE, event_id="e-2",
               correlation_id="c", causation_id="k")
    new_value, _ = EventCodec().encode(ev)
    record = fastavro.schemaless_reader(io.BytesIO(new_value[10:]),
                                        fastavro.parse_schema(json.loads((SCHEMA_DIR / "assessment_event.avsc").read_text())),
                                        return_record_name=True)
    assert isinstance(record, dict)
    value, headers = _old_encode("assessment_event.avsc", record, "AssessmentFailed")
    assert value[:2] != b"\xc3\x01"
    assert EventCodec().decode(value, headers) == ev

    env = CommandEnvelope(Create(assessment_id="a-3", command_id="c-3", request={"x": 1}), NOW, EventSource.STORE)
    cmd_value, _ = CommandCodec().encode(env)
    cmd_record = fastavro.schemaless_reader(io.BytesIO(cmd_value[10:]), CommandCodec().avro.parsed,
                                            return_record_name=True)
    assert isinstance(cmd_record, dict)
    value, headers = _old_encode("assessment_command.avsc", cmd_record, "Create")
    assert CommandCodec().decode(value, headers) == env

    o = Outcome(command_id="c-4", assessment_id="a-4", accepted=False, processed_at=NOW, command_offset=17, error_type="InvalidTransition", error_message="no",
                error_details={"state": "COMPLETED"})
    out_value, _ = OutcomeCodec().encode(o)
    out_record = fastavro.schemaless_reader(io.BytesIO(out_value[10:]), OutcomeCodec().avro.parsed)
    assert isinstance(out_record, dict)
    value, headers = _old_encode("command_outcome.avsc", out_record, "rejected")
    assert OutcomeCodec().decode(value, headers) == o


def test_an_unknown_fingerprint_is_a_named_error_and_corrupt_bytes_a_plain_one() -> None:
    """An unknown writer fingerprint raises UnresolvableSchema naming it; a corrupt body raises CodecError only."""
    codec = EventCodec()
    value, headers = codec.encode(Event("a-5", 1, Started(), NOW, NOW))
    unknown = value[:2] + bytes(8) + value[10:]
    with pytest.raises(UnresolvableSchema) as info:
        codec.decode(unknown, headers)
    assert info.value.fingerprint == "00" * 8 and isinstance(info.value, CodecError)
    located = info.value.at("t", 3, 42)
    assert (located.topic, located.partition, located.offset) == ("t", 3, 42) and "t/3/42" in str(located)
    with pytest.raises(CodecError) as corrupt:
        codec.decode(value[:12], headers)
    assert not isinstance(corrupt.value, UnresolvableSchema)


def _newer_event_schema() -> dict[str, Any]:
    """The event schema as a newer writer might have it: a new optional field."""
    raw: dict[str, Any] = json.loads((SCHEMA_DIR / "assessment_event.avsc").read_text())
    newer = copy.deepcopy(raw)
    newer["fields"].insert(-1, {"name": "tenant", "type": ["null", "string"], "default": None})
    return newer


def test_a_newer_writer_schema_added_at_run_time_is_resolved() -> None:
    """A record of a newer writer (one more optional field) decodes once its schema is added: nothing lost."""
    newer = _newer_event_schema()
    parsed = fastavro.parse_schema(newer)
    codec = EventCodec()
    ev = Event("a-6", 1, Started("w"), NOW, NOW, event_id="e-6")
    current_value, _ = codec.encode(ev)
    record = fastavro.schemaless_reader(io.BytesIO(current_value[10:]), codec.avro.parsed, return_record_name=True)
    assert isinstance(record, dict)
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + crc64_avro(to_parsing_canonical_form(parsed).encode()).to_bytes(8, "little"))
    fastavro.schemaless_writer(buf, parsed, {**record, "tenant": "t-1"})
    with pytest.raises(UnresolvableSchema):
        codec.decode(buf.getvalue(), [])
    fp = codec.avro.add_writer(json.dumps(newer))
    assert codec.avro.knows(fp) and fp == buf.getvalue()[2:10].hex()
    assert codec.decode(buf.getvalue(), []) == ev


def test_a_writer_schema_the_reader_cannot_read_is_a_named_error_with_the_reason() -> None:
    """A known but incompatible writer schema (a field's type changed) raises UnresolvableSchema saying why."""
    raw = json.loads((SCHEMA_DIR / "assessment_event.avsc").read_text())
    bad = copy.deepcopy(raw)
    next(f for f in bad["fields"] if f["name"] == "version")["type"] = "string"
    codec = EventCodec()
    fp = codec.avro.add_writer(json.dumps(bad))
    with pytest.raises(UnresolvableSchema, match="version: writer's string cannot be read as long"):
        codec.decode(b"\xc3\x01" + bytes.fromhex(fp) + b"\x00", [])


@pytest.mark.parametrize("current,old", _history_pairs(), ids=lambda p: p.name)
def test_every_current_schema_reads_its_history_backward(current: Path, old: Path) -> None:
    """Backward: the current schema reads every record a historical version of it wrote."""
    assert incompatibilities(json.loads(current.read_text()), json.loads(old.read_text())) == []


@pytest.mark.parametrize("current,old", _history_pairs(), ids=lambda p: p.name)
def test_every_historical_schema_reads_the_current_one_forward(current: Path, old: Path) -> None:
    """Forward: every historical version reads records the current schema writes (the fields it knows)."""
    assert incompatibilities(json.loads(old.read_text()), json.loads(current.read_text())) == []


def test_every_schema_has_history_to_check_or_is_its_own_first_version() -> None:
    """The check covers something: each history file belongs to a current schema."""
    assert HISTORY and all(any(o.name.split(".v")[0] == c.stem for c in CURRENT) for o in HISTORY)


def test_an_incompatible_change_is_detected_by_the_same_check() -> None:
    """A new required field (no default), a removed union branch and a narrowed type all fail the check."""
    raw = json.loads((SCHEMA_DIR / "assessment_event.avsc").read_text())
    required = copy.deepcopy(raw)
    required["fields"].append({"name": "tenant", "type": "string"})
    assert any("tenant" in p and "no default" in p for p in incompatibilities(required, raw))
    assert incompatibilities(raw, required) == []  # the old reader ignores the new field: forward holds
    fewer = copy.deepcopy(raw)
    payload = next(f for f in fewer["fields"] if f["name"] == "payload")
    payload["type"] = [b for b in payload["type"] if b["name"] != "AssessmentRetried"]
    assert any("payload" in p for p in incompatibilities(fewer, raw))
    narrowed = copy.deepcopy(raw)
    next(f for f in narrowed["fields"] if f["name"] == "version")["type"] = "int"
    assert incompatibilities(narrowed, raw) == ["version: writer's long cannot be read as int"]
    optional = _newer_event_schema()
    assert incompatibilities(optional, raw) == [] and incompatibilities(raw, optional) == []
