"""Avro encoding of ``Event`` (``assessment_event.avsc``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from assessment_store.core import (
    load_native,
    Cancelled,
    CodecError,
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

from ._avro import AvroRecordCodec, Headers, json_text
from . import _fast_event

# The compiled twin when it is current (core/_native.py): the same functions, 2-3x faster.
_fast: Any = load_native(_fast_event)
_FAST_FINGERPRINT: str = _fast.FINGERPRINT
read_event: Callable[[bytes, int], Event | None] = _fast.read_event
write_event: Callable[[Event], tuple[bytes, str] | None] = _fast.write_event

__all__ = ["CONTENT_TYPE", "EventCodec"]

CONTENT_TYPE = b"application/vnd.assessment-store.event+avro"


def _payload_to_avro(p: Payload) -> tuple[str, dict[str, Any]]:
    match p:
        case Created():
            return "AssessmentCreated", {
                "request_json": json_text(p.request),
                "processing_timeout_ms": p.processing_timeout_ms,
                "max_retries": p.max_retries,
            }
        case Started():
            return "AssessmentStarted", {"worker": p.worker}
        case ProgressUpdated():
            return "ProgressUpdated", {"progress": p.progress, "message": p.message}
        case Completed():
            return "AssessmentCompleted", {"result_json": json_text(p.result), "duration_ms": p.duration_ms}
        case Failed():
            return "AssessmentFailed", {"error": p.error, "retryable": p.retryable, "duration_ms": p.duration_ms}
        case Cancelled():
            return "AssessmentCancelled", {"reason": p.reason}
        case Retried():
            return "AssessmentRetried", {"retry_count": p.retry_count}
    raise AssertionError(p)  # pragma: no cover


def _payload_from_avro(name: str, r: dict[str, Any]) -> Payload:
    match name.rsplit(".", 1)[-1]:
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


class EventCodec:
    """Encodes events with the current schema; decodes any schema version it knows."""

    def __init__(self) -> None:
        self.avro = AvroRecordCodec("assessment_event.avsc", CONTENT_TYPE)
        # Records of the current schema are read by hand (schemas/_fast_event.py), but only while
        # the current schema is the one that reader was written for.
        self._fast_prefix = self.avro.hand_prefix(_FAST_FINGERPRINT)

    @property
    def fast_path(self) -> bool:
        """Whether records of the current schema skip fastavro (schemas/_fast_event.py)."""
        return self._fast_prefix is not None

    @property
    def fingerprint(self) -> str:
        return self.avro.fingerprint

    def encode(self, event: Event) -> tuple[bytes, list[tuple[str, bytes]]]:
        if self._fast_prefix is not None:  # the current schema is the hand writer's
            written = write_event(event)
            if written is not None:
                return self.avro.frame(*written)
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
            "payload": (self.avro.namespace + name, payload),
        }
        return self.avro.encode(record, name)

    def decode(self, value: bytes | None, headers: Headers = ()) -> Event:
        prefix = self._fast_prefix
        if prefix is not None and value and value.startswith(prefix):
            event = read_event(value, len(prefix))
            if event is not None:
                return event
            # Not a clean read: fastavro decodes it, and reports a corrupt record in its own words.
        r = self.avro.decode(value, headers)
        try:
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
        except (ValueError, TypeError, KeyError) as e:
            raise CodecError(f"{type(e).__name__}: {e}") from e
