"""Avro encoding of ``Event`` with fastavro.

The value is schemaless Avro (no container header) so a record costs only its fields; the
writer schema is named by its CRC-64-AVRO fingerprint in the ``schema-fingerprint`` header, and
the payload's record name in the ``type`` header, so ``kcat -J`` users can filter without Avro.
Decoding resolves the writer schema by fingerprint against the current reader schema, which is
what lets old records stay readable after the schema gains optional fields.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from assessment_store._errors import CodecError
from assessment_store._model import (
    JSON,
    Cancelled,
    Completed,
    Created,
    Event,
    EventSource,
    Failed,
    Payload,
    ProgressUpdated,
    Retried,
    Started,
)

__all__ = ["CONTENT_TYPE", "SCHEMA_DIR", "EventCodec", "Headers"]

_NAMESPACE = "io.assessmentstore.events."
SCHEMA_DIR = Path(__file__).resolve().parent
CONTENT_TYPE = b"application/vnd.assessment-store.event+avro"

Headers = Sequence[tuple[str, bytes]]


def _json_text(value: JSON) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _payload_to_avro(p: Payload) -> tuple[str, dict[str, Any]]:
    match p:
        case Created():
            return "AssessmentCreated", {
                "request_json": _json_text(p.request),
                "processing_timeout_ms": p.processing_timeout_ms,
                "max_retries": p.max_retries,
            }
        case Started():
            return "AssessmentStarted", {"worker": p.worker}
        case ProgressUpdated():
            return "ProgressUpdated", {"progress": p.progress, "message": p.message}
        case Completed():
            return "AssessmentCompleted", {"result_json": _json_text(p.result), "duration_ms": p.duration_ms}
        case Failed():
            return "AssessmentFailed", {"error": p.error, "retryable": p.retryable, "duration_ms": p.duration_ms}
        case Cancelled():
            return "AssessmentCancelled", {"reason": p.reason}
        case Retried():
            return "AssessmentRetried", {"retry_count": p.retry_count}
    raise AssertionError(p)  # pragma: no cover


def _payload_from_avro(name: str, r: dict[str, Any]) -> Payload:
    short = name.rsplit(".", 1)[-1]
    match short:
        case "AssessmentCreated":
            return Created(json.loads(r["request_json"]), r["processing_timeout_ms"], r["max_retries"])
        case "AssessmentStarted":
            return Started(r["worker"])
        case "ProgressUpdated":
            return ProgressUpdated(r["progress"], r["message"])
        case "AssessmentCompleted":
            return Completed(json.loads(r["result_json"]), r["duration_ms"])
        case "AssessmentFailed":
            return Failed(r["error"], r["retryable"], r["duration_ms"])
        case "AssessmentCancelled":
            return Cancelled(r["reason"])
        case "AssessmentRetried":
            return Retried(r["retry_count"])
    raise CodecError(f"unknown payload record {name!r}")


@dataclass(frozen=True)
class _Schema:
    parsed: Any
    fingerprint: str


def _load(path: Path) -> _Schema:
    parsed = fastavro.parse_schema(json.loads(path.read_text()))
    return _Schema(parsed, fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


class EventCodec:
    """Encodes events with the current schema; decodes any schema version it knows."""

    def __init__(self, schema_path: Path = SCHEMA_DIR / "assessment_event.avsc") -> None:
        self._current = _load(schema_path)
        # Older writer schemas are added here as the schema evolves (one file per version).
        self._writers: dict[str, Any] = {self._current.fingerprint: self._current.parsed}

    @property
    def fingerprint(self) -> str:
        return self._current.fingerprint

    def encode(self, event: Event) -> tuple[bytes, list[tuple[str, bytes]]]:
        name, payload = _payload_to_avro(event.payload)
        record = {
            "event_id": event.event_id,
            "assessment_id": event.assessment_id,
            "version": event.version,
            "type": name,
            "occurred_at": event.occurred_at,
            "recorded_at": event.recorded_at,
            "source": event.source.value,
            "correlation_id": event.correlation_id,
            "causation_id": event.causation_id,
            "payload": (_NAMESPACE + name, payload),
        }
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self._current.parsed, record)
        headers = [
            ("type", name.encode()),
            ("schema-fingerprint", self._current.fingerprint.encode()),
            ("content-type", CONTENT_TYPE),
        ]
        return buf.getvalue(), headers

    def decode(self, value: bytes | None, headers: Headers = ()) -> Event:
        if not value:
            raise CodecError("empty record value")
        fp = next((v for k, v in headers if k == "schema-fingerprint"), None)
        if fp is None:
            raise CodecError("missing 'schema-fingerprint' header")
        writer = self._writers.get(fp.decode("ascii", "replace"))
        if writer is None:
            raise CodecError(f"unknown schema fingerprint {fp!r}")
        try:
            # Schema resolution costs a third of the decode; skip it when nothing to resolve.
            reader = None if writer is self._current.parsed else self._current.parsed
            r: dict[str, Any] = fastavro.schemaless_reader(  # type: ignore[assignment]  # a record schema
                io.BytesIO(value), writer, reader, return_record_name=True
            )
            name, payload = r["payload"]
            return Event(
                assessment_id=r["assessment_id"],
                version=r["version"],
                payload=_payload_from_avro(name, payload),
                occurred_at=r["occurred_at"],
                recorded_at=r["recorded_at"],
                source=EventSource(r["source"]),
                event_id=str(r["event_id"]),
                correlation_id=r["correlation_id"],
                causation_id=r["causation_id"],
            )
        except CodecError:
            raise
        except (EOFError, ValueError, TypeError, KeyError, IndexError) as e:
            raise CodecError(f"{type(e).__name__}: {e}") from e
