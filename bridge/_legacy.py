"""The legacy system's vocabulary and the field checks shared by the live bridge and the import.

Pure: no I/O. Everything here either returns a checked value or raises ``_Reject`` naming the
field, the kind of problem and the reason; the callers turn that into a ``Rejection`` value, so
no exception of this module ever reaches a caller of the bridge.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from assessment_store.core import JSON, State, ValidationError, validate_id

__all__ = [
    "LEGACY_STATES",
    "LegacyEvent",
    "RejectKind",
    "Rejection",
    "convert_legacy_state",
    "stable_id",
]

T = TypeVar("T")

LEGACY_STATES: dict[str, State] = {
    "pending": State.PENDING,
    "processing": State.PROCESSING,
    "completed": State.COMPLETED,
    "failed": State.FAILED,
    "cancelled": State.CANCELLED,
}
"""Legacy status -> store state (docs/legacy-format.md). An unknown status has no entry: it is *not* FAILED."""


def convert_legacy_state(status: str) -> State | None:
    """The store state of a legacy status, or None when the status is unknown (mapping it
    to FAILED would invent failures)."""
    return LEGACY_STATES.get(status)


class LegacyEvent(str, enum.Enum):
    """The six events the legacy ``EventEmitter`` emits (docs/legacy-format.md)."""

    CREATED = "assessment.created"
    STARTED = "assessment.started"
    PROGRESS = "assessment.progress"
    COMPLETED = "assessment.completed"
    FAILED = "assessment.failed"
    CANCELLED = "assessment.cancelled"


class RejectKind(str, enum.Enum):
    """Why an input could not be translated; the dead-letter counters are keyed by it."""

    EMPTY = "empty"
    TOO_LARGE = "too-large"
    NOT_UTF8 = "not-utf8"
    INVALID_JSON = "invalid-json"
    NOT_AN_OBJECT = "not-an-object"
    MISSING_FIELD = "missing-field"
    WRONG_TYPE = "wrong-type"
    INVALID_VALUE = "invalid-value"
    UNKNOWN_EVENT = "unknown-event"
    UNKNOWN_STATUS = "unknown-status"
    STATUS_MISMATCH = "status-mismatch"
    CONFLICT = "conflict"
    """(import) the store holds a different final state than the export"""
    UNENCODABLE = "unencodable"
    """translated, but a command could not be encoded as Avro (a gap in validation: kept, not fatal)"""
    INTERNAL_ERROR = "internal-error"


@dataclass(frozen=True, slots=True)
class Rejection:
    """An input the bridge cannot translate: what kind of problem, in which field, and why."""

    kind: RejectKind
    field: str | None
    reason: str
    """Complete sentence naming the field, e.g. ``data.progress: must be a number, got str``."""


class _Reject(ValidationError):
    """Control flow inside the bridge's pure modules only; always converted to ``Rejection``."""

    def __init__(self, kind: RejectKind, field: str | None, reason: str) -> None:
        super().__init__(field or "message", reason)
        self.kind = kind
        self.where = field

    def rejection(self) -> Rejection:
        text = f"{self.where}: {self.reason}" if self.where else self.reason
        return Rejection(self.kind, self.where, text)


# One encoder, built once (json.dumps with options builds one per call). Changing its output would
# change every id: re-reading the legacy topic must give the ids it gave the first time.
_ID_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def stable_id(prefix: str, *parts: object) -> str:
    """``prefix`` + 24 hex digits (96 bits) of SHA-256 over the parts as canonical JSON.

    96 bits keep the chance of any collision below 1e-9 up to ~10^10 distinct inputs, and the id
    short (the command id travels in every event and outcome)."""
    text = _ID_JSON.encode(parts)
    return prefix + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


# --- decoding ---------------------------------------------------------------------------------

def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def decode_json_object(raw: bytes | None, *, max_bytes: int, what: str) -> dict[str, Any]:
    """Bytes -> a JSON object, or ``_Reject`` (empty, too large, not UTF-8, not JSON, not an object)."""
    if raw is None or not raw.strip():
        raise _Reject(RejectKind.EMPTY, None, f"{what} is empty")
    if len(raw) > max_bytes:
        raise _Reject(RejectKind.TOO_LARGE, None, f"{what} is {len(raw)} bytes, above the limit of {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Reject(
            RejectKind.NOT_UTF8, None,
            f"{what} is not UTF-8: byte 0x{raw[e.start]:02x} at position {e.start} ({e.reason})",
        ) from e
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except RecursionError as e:
        raise _Reject(RejectKind.INVALID_JSON, None, f"{what} is not JSON: nested too deeply") from e
    except ValueError as e:  # json.JSONDecodeError, NaN/Infinity, integers beyond 4300 digits
        raise _Reject(RejectKind.INVALID_JSON, None, f"{what} is not JSON: {e}") from e
    if not isinstance(value, dict):
        raise _Reject(RejectKind.NOT_AN_OBJECT, None, f"{what} is a JSON {_type(value)}, not an object")
    if _SURROGATE_ESCAPE.search(text):
        # json.loads pairs valid surrogate escapes into one character; a lone one stays and could
        # not be encoded as UTF-8 later (Avro, PostgreSQL), so it is refused here, by field.
        _check_surrogates(value, "")
    return value


def _check_surrogates(value: object, path: str) -> None:
    if isinstance(value, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise _Reject(RejectKind.NOT_UTF8, path or None,
                          "contains a lone UTF-16 surrogate escape, not encodable as UTF-8")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_surrogates(k, path)
            _check_surrogates(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_surrogates(v, f"{path}[{i}]")


def _type(value: object) -> str:
    """The JSON name of a decoded value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__  # pragma: no cover - json.loads yields only the above


# --- fields -------------------------------------------------------------------------------------

_MISSING: Any = object()


def field_value(obj: dict[str, Any], key: str) -> Any:
    """The value, or ``_MISSING`` when the key is absent (null is a value here)."""
    return obj.get(key, _MISSING)


def is_missing(value: object) -> bool:
    return value is _MISSING


def required(obj: dict[str, Any], key: str, field: str, kind: type[T], json_type: str) -> T:
    value = obj.get(key, _MISSING)
    if value is _MISSING or value is None:
        raise _Reject(RejectKind.MISSING_FIELD, field, "is required" if value is _MISSING else "is null")
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        article = "an" if json_type[0] in "aeiou" else "a"
        raise _Reject(RejectKind.WRONG_TYPE, field, f"must be {article} {json_type}, got {_type(value)}")
    return value


def optional_str(obj: dict[str, Any], key: str, field: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Reject(RejectKind.WRONG_TYPE, field, f"must be a string, got {_type(value)}")
    return value


def optional_number(obj: dict[str, Any], key: str, field: str, *, low: float, high: float | None) -> int | None:
    """A JSON number in [low, high] as an int (legacy values are JavaScript doubles: a fraction
    is cut off towards zero, so progress never reads higher than the legacy system reported)."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Reject(RejectKind.WRONG_TYPE, field, f"must be a number, got {_type(value)}")
    if isinstance(value, float) and not math.isfinite(value):  # pragma: no cover - json refuses NaN
        raise _Reject(RejectKind.INVALID_VALUE, field, f"must be finite, got {value}")
    if value < low or (high is not None and value > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise _Reject(RejectKind.INVALID_VALUE, field, f"must be {bound}, got {value}")
    return int(value)


def optional_timestamp(obj: dict[str, Any], key: str, field: str) -> str | None:
    value = optional_str(obj, key, field)
    if value is not None:
        parse_timestamp(value, field)
    return value


def parse_timestamp(value: str, field: str) -> datetime:
    """An ISO-8601 legacy timestamp as an aware datetime; one without an offset is taken as UTC (the
    legacy service writes ``Date.toISOString()``, always UTC)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as e:
        raise _Reject(RejectKind.INVALID_VALUE, field, f"is not an ISO-8601 timestamp: {value[:60]!r}") from e
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def assessment_id(obj: dict[str, Any], key: str, field: str) -> str:
    aid = required(obj, key, field, str, "string")
    try:
        return validate_id(aid)
    except ValidationError as e:
        raise _Reject(RejectKind.INVALID_VALUE, field, e.reason) from e


def store_state(obj: dict[str, Any], key: str, field: str) -> State | None:
    """The store state of a present status; None when absent or null (any field may
    be missing); ``_Reject`` when it is not one of the five legacy statuses."""
    value = optional_str(obj, key, field)
    if value is None:
        return None
    state = convert_legacy_state(value)
    if state is None:
        raise _Reject(RejectKind.UNKNOWN_STATUS, field,
                      f"unknown status {value[:60]!r} (known: {', '.join(LEGACY_STATES)})")
    return state


def json_value(obj: dict[str, Any], key: str) -> JSON:
    """Any JSON value; absent reads as null."""
    return obj.get(key)


# Fields of a store command -> the legacy field they come from, to name the right field when the
# store's own validation (``validate_command``) refuses a value.
COMMAND_FIELDS: dict[str, str] = {
    "assessment_id": "assessmentId",
    "request": "request",
    "result": "result",
    "message": "message",
    "error": "error",
    "duration_ms": "duration",
    "progress": "progress",
    "reason": "message",
}
