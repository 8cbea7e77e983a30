"""Avro encoding of commands (``assessment_command.avsc``) and outcomes (``command_outcome.avsc``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from assessment_store.core import (
    load_native,
    Cancel,
    CodecError,
    Command,
    CommandEnvelope,
    Complete,
    Create,
    EventSource,
    ExpireDeadline,
    Fail,
    Outcome,
    Retry,
    Start,
    UpdateProgress,
)

from ._avro import AvroRecordCodec, Headers, json_text
from . import _fast_command

# The compiled twin when it is current (core/_native.py): the same function, about 2x faster.
_fast: Any = load_native(_fast_command)
_FAST_FINGERPRINT: str = _fast.FINGERPRINT
read_command: Callable[[bytes, int], CommandEnvelope | None] = _fast.read_command

__all__ = ["CommandCodec", "OutcomeCodec"]


def _body_to_avro(c: Command) -> tuple[str, dict[str, Any]]:
    match c:
        case Create():
            return "Create", {"request_json": json_text(c.request),
                              "processing_timeout_ms": c.processing_timeout_ms, "max_retries": c.max_retries}
        case Start():
            return "Start", {"worker": c.worker}
        case UpdateProgress():
            return "UpdateProgress", {"progress": c.progress, "message": c.message}
        case Complete():
            return "Complete", {"result_json": json_text(c.result), "duration_ms": c.duration_ms}
        case Fail():
            return "Fail", {"error": c.error, "retryable": c.retryable, "duration_ms": c.duration_ms}
        case Cancel():
            return "Cancel", {"reason": c.reason}
        case Retry():
            return "Retry", {}
        case ExpireDeadline():
            return "ExpireDeadline", {"started_at": c.started_at, "timeout_ms": c.timeout_ms}
    raise AssertionError(c)  # pragma: no cover


def _body_from_avro(name: str, b: dict[str, Any], common: dict[str, Any]) -> Command:
    match name.rsplit(".", 1)[-1]:
        case "Create":
            return Create(request=json.loads(b["request_json"]), processing_timeout_ms=b["processing_timeout_ms"],
                          max_retries=b["max_retries"], **common)
        case "Start":
            return Start(worker=b["worker"], **common)
        case "UpdateProgress":
            return UpdateProgress(progress=b["progress"], message=b["message"], **common)
        case "Complete":
            return Complete(result=json.loads(b["result_json"]), duration_ms=b["duration_ms"], **common)
        case "Fail":
            return Fail(error=b["error"], retryable=b["retryable"], duration_ms=b["duration_ms"], **common)
        case "Cancel":
            return Cancel(reason=b["reason"], **common)
        case "Retry":
            return Retry(**common)
        case "ExpireDeadline":
            return ExpireDeadline(started_at=b["started_at"], timeout_ms=b["timeout_ms"], **common)
    raise CodecError(f"unknown command body {name!r}")


class CommandCodec:
    def __init__(self) -> None:
        self.avro = AvroRecordCodec("assessment_command.avsc", b"application/vnd.assessment-store.command+avro")
        # Records of the current schema are read by hand (schemas/_fast_command.py), but only while
        # the current schema is the one that reader was written for.
        self._fast_prefix = self.avro.hand_prefix(_FAST_FINGERPRINT)

    @property
    def fast_path(self) -> bool:
        """Whether records of the current schema skip fastavro (schemas/_fast_command.py)."""
        return self._fast_prefix is not None

    def encode(self, env: CommandEnvelope) -> tuple[bytes, list[tuple[str, bytes]]]:
        c = env.command
        name, body = _body_to_avro(c)
        record = {
            "command_id": c.command_id,
            "assessment_id": c.assessment_id,
            "type": name,
            "expected_version": c.expected_version,
            "issued_at": env.issued_at,
            "source": env.source.value,
            "correlation_id": c.correlation_id,
            "occurred_at": env.occurred_at,
            "body": (self.avro.namespace + name, body),
        }
        return self.avro.encode(record, name)

    def decode(self, value: bytes | None, headers: Headers) -> CommandEnvelope:
        prefix = self._fast_prefix
        if prefix is not None and value and value.startswith(prefix):
            env = read_command(value, len(prefix))
            if env is not None:
                return env
            # Not a clean read: fastavro decodes it, and reports a corrupt record in its own words.
        r = self.avro.decode(value, headers)
        try:
            name, body = r["body"]
            common = {
                "assessment_id": r["assessment_id"],
                "command_id": r["command_id"],
                "expected_version": r["expected_version"],
                "correlation_id": r["correlation_id"],
            }
            return CommandEnvelope(_body_from_avro(name, body, common), r["issued_at"], EventSource(r["source"]),
                                   r["occurred_at"])
        except (ValueError, TypeError, KeyError) as e:
            raise CodecError(f"{type(e).__name__}: {e}") from e


class OutcomeCodec:
    def __init__(self) -> None:
        self.avro = AvroRecordCodec("command_outcome.avsc", b"application/vnd.assessment-store.outcome+avro")

    def encode(self, o: Outcome) -> tuple[bytes, list[tuple[str, bytes]]]:
        record = {
            "command_id": o.command_id,
            "assessment_id": o.assessment_id,
            "accepted": o.accepted,
            "version": o.version,
            "event_id": o.event_id,
            "error_type": o.error_type,
            "error_message": o.error_message,
            "error_details_json": json_text(o.error_details) if o.error_details is not None else None,
            "processed_at": o.processed_at,
            "command_offset": o.command_offset,
            "duplicate": o.duplicate,
        }
        return self.avro.encode(record, "accepted" if o.accepted else "rejected")

    def decode(self, value: bytes | None, headers: Headers) -> Outcome:
        r = self.avro.decode(value, headers)
        try:
            details = r["error_details_json"]
            return Outcome(
                command_id=r["command_id"], assessment_id=r["assessment_id"], accepted=r["accepted"],
                processed_at=r["processed_at"], command_offset=r["command_offset"], version=r["version"],
                event_id=r["event_id"], error_type=r["error_type"], error_message=r["error_message"],
                error_details=json.loads(details) if details is not None else None, duplicate=r["duplicate"],
            )
        except (ValueError, TypeError, KeyError) as e:
            raise CodecError(f"{type(e).__name__}: {e}") from e
