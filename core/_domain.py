"""The state machine, as two pure functions.

``decide(current, command, now)`` either returns the one event the command produces or raises
a ``StoreUsageError``; it never touches I/O. ``evolve(current, event)`` folds an event into the
state. The writer (``streams``) and the projector (``projections``) share them, so the rules that
accept a command and the rules that fold its event cannot drift apart.

    PENDING ──start──▶ PROCESSING ──complete──▶ COMPLETED
       │  ▲                │  └──────fail─────▶ FAILED ──retry──▶ PENDING
       │  └─────────retry──┼─────────────────────┘
       └──cancel / fail────┴──cancel──▶ CANCELLED

Progress (0-100) is accepted while PENDING or PROCESSING. COMPLETED and CANCELLED accept nothing.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime

from ._errors import AssessmentNotFound, InvalidTransition, ValidationError, VersionConflict
from ._model import (
    Assessment,
    Cancel,
    Cancelled,
    Command,
    Complete,
    Completed,
    Create,
    Created,
    Event,
    EventSource,
    ExpireDeadline,
    Fail,
    Failed,
    Payload,
    ProgressUpdated,
    Retried,
    Retry,
    Start,
    Started,
    State,
    UpdateProgress,
    new_id,
    slot_constructor,
    slot_replacer,
)

__all__ = [
    "INT32_MAX", "INT64_MAX", "INT64_MIN", "MAX_ID_LENGTH", "MAX_JSON_DEPTH", "MAX_TEXT_LENGTH", "check_text",
    "decide", "evolve", "transition_name", "validate_command", "validate_command_id",
    "validate_id", "validate_json",
]

_new_event = slot_constructor(Event)
"""``Event(...)`` with every field given in order (its constructor per event was 7 % of a processor's CPU)."""
_progress_updated = slot_constructor(ProgressUpdated)
"""The most frequent payload, without its frozen ``__init__`` (0.37 -> 0.17 µs)."""

# The copies evolve makes, one per event type: the fields every event changes, then the payload's.
# Each is Assessment.replace for its fixed set of fields (core/_model.py slot_replacer): the fold's
# copy per event, 2.3 µs through replace's keywords, less than a third of that so.
_COMMON = ("version", "updated_at", "last_event_id")
_started = slot_replacer(Assessment, (*_COMMON, "state", "started_at"))
_progressed = slot_replacer(Assessment, (*_COMMON, "progress", "message"))
_completed = slot_replacer(Assessment, (*_COMMON, "state", "progress", "result_data", "duration", "finished_at"))
_failed = slot_replacer(Assessment, (*_COMMON, "state", "error_message", "retryable", "duration", "finished_at"))
_cancelled = slot_replacer(Assessment, (*_COMMON, "state", "cancel_reason", "finished_at"))
_retried = slot_replacer(Assessment, (*_COMMON, "state", "retry_count", "progress", "error_message", "retryable",
                                      "started_at", "finished_at", "duration"))

MAX_ID_LENGTH = 200
MAX_TEXT_LENGTH = 10_000
MAX_JSON_DEPTH = 64
"""Nesting levels (objects and arrays) a request/result document may have. Deeper documents are
refused: they could be stored, but not read back by every reader (recursive JSON decoders and
encoders, the HTTP API's among them, give up a few hundred levels down)."""
INT32_MAX = 2**31 - 1
"""Avro ``int`` (``max_retries``; PostgreSQL ``integer``)."""
INT64_MAX = 2**63 - 1
"""Avro ``long`` (versions, durations, timeouts; PostgreSQL ``bigint``); also the bound of integers
inside request/result documents, so any reader can hold them in a signed 64-bit integer."""
INT64_MIN = -(2**63)

# U+0000 cannot be stored in PostgreSQL text or jsonb; U+D800-U+DFFF (lone surrogates) cannot be
# encoded as UTF-8 (Avro strings, PostgreSQL). Either one in the log would stop its readers.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

_ALLOWED: dict[type[Command], frozenset[State]] = {
    Start: frozenset({State.PENDING}),
    UpdateProgress: frozenset({State.PENDING, State.PROCESSING}),
    Complete: frozenset({State.PROCESSING}),
    Fail: frozenset({State.PENDING, State.PROCESSING}),
    Cancel: frozenset({State.PENDING, State.PROCESSING}),
    Retry: frozenset({State.FAILED}),
    ExpireDeadline: frozenset({State.PROCESSING}),
}

_NAMES: dict[type[Command], str] = {
    Create: "create",
    Start: "start",
    UpdateProgress: "update_progress",
    Complete: "complete",
    Fail: "fail",
    Cancel: "cancel",
    Retry: "retry",
    ExpireDeadline: "expire_deadline",
}


def transition_name(command: Command) -> str:
    return _NAMES[type(command)]


def check_text(field_name: str, value: str) -> None:
    """``ValidationError`` when ``value`` holds a character PostgreSQL or UTF-8 cannot take.

    The reason never repeats the value: it travels in outcomes and logs, which must stay storable."""
    bad = _UNSTORABLE.search(value)
    if bad is None:
        return
    if bad.group() == "\x00":
        raise ValidationError(field_name, f"contains a NUL character (U+0000) at index {bad.start()}, "
                                          "which PostgreSQL cannot store")
    raise ValidationError(field_name, f"contains a lone surrogate (U+{ord(bad.group()):04X}) at index "
                                      f"{bad.start()}, which cannot be encoded as UTF-8")


def validate_id(assessment_id: object, field_name: str = "assessment_id") -> str:
    if not isinstance(assessment_id, str) or not assessment_id.strip():
        raise ValidationError(field_name, "must be a non-empty string")
    if len(assessment_id) > MAX_ID_LENGTH:
        raise ValidationError(field_name, f"longer than {MAX_ID_LENGTH} characters")
    check_text(field_name, assessment_id)
    if not assessment_id.isprintable() or "|" in assessment_id:
        raise ValidationError(field_name, "must be printable and must not contain '|'")
    return assessment_id


def _integer(field_name: str, value: object, *, low: int = 0, high: int = INT64_MAX) -> None:
    """None, or an int (not a bool) in [low, high]: the range of the Avro/PostgreSQL type behind it."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field_name, f"must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValidationError(field_name, f"must be between {low} and {high}")


def _text(field_name: str, value: str | None, *, required: bool = False) -> None:
    if value is None:
        if required:
            raise ValidationError(field_name, "is required")
        return
    if not isinstance(value, str):
        raise ValidationError(field_name, f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValidationError(field_name, "must not be empty")
    if len(value) > MAX_TEXT_LENGTH:
        raise ValidationError(field_name, f"longer than {MAX_TEXT_LENGTH} characters")
    check_text(field_name, value)


def _optional_id(field_name: str, value: object) -> None:
    """command_id / correlation_id: free-form, but short and storable."""
    if value is None:
        return
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise ValidationError(field_name, f"must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    check_text(field_name, value)


def validate_command_id(command_id: object) -> str:
    """A command id as a reader may look one up: non-empty, short, storable."""
    if command_id is None:
        raise ValidationError("command_id", "is required")
    _optional_id("command_id", command_id)
    assert isinstance(command_id, str)
    return command_id


def _key_path(path: str, key: str) -> str:
    shown = key if len(key) <= 64 else key[:61] + "..."
    return f"{path}.{shown}"


def validate_json(field_name: str, value: object, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Every value of a JSON document is one PostgreSQL's jsonb stores and gives back, and every
    reader can decode: strings and object keys without NUL or lone surrogates, integers within
    64 bits, finite floats, at most ``max_depth`` levels of objects and arrays. The refusal names
    the path of the value (``request.a.b[3]``).

    Iterative, so neither a very deep nor a cyclic structure can exhaust the stack."""
    stack: list[tuple[object, str, int]] = [(value, field_name, 0)]
    while stack:
        v, path, depth = stack.pop()
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, str):
            check_text(path, v)
        elif isinstance(v, int):
            if not INT64_MIN <= v <= INT64_MAX:
                raise ValidationError(path, f"integer outside the 64-bit range {INT64_MIN}..{INT64_MAX}")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ValidationError(path, f"must be a finite number, got {v}")
        elif isinstance(v, dict):
            if depth >= max_depth:
                raise ValidationError(path, f"nests deeper than {max_depth} levels of objects and arrays")
            for k, item in v.items():
                if not isinstance(k, str):
                    raise ValidationError(path, f"object keys must be strings, got {type(k).__name__}")
                try:
                    check_text(path, k)
                except ValidationError as e:
                    raise ValidationError(path, f"has an object key that {e.reason}") from None
                stack.append((item, _key_path(path, k), depth + 1))
        elif isinstance(v, (list, tuple)):
            if depth >= max_depth:
                raise ValidationError(path, f"nests deeper than {max_depth} levels of objects and arrays")
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(v))
        else:
            raise ValidationError(path, f"is not JSON: a {type(v).__name__}")


def _json_document(field_name: str, value: object, max_bytes: int) -> None:
    validate_json(field_name, value)
    try:
        size = len(json.dumps(value, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError) as e:  # pragma: no cover - validate_json refuses all of these first
        raise ValidationError(field_name, f"is not JSON-serialisable: {e}") from e
    if size > max_bytes:
        raise ValidationError(field_name, f"is {size} bytes, above the limit of {max_bytes}")


def validate_command(command: Command, max_json_bytes: int) -> None:
    """Field checks that need no state: clients run them before sending, the processor again."""
    validate_id(command.assessment_id)
    validate_command_id(command.command_id)
    _optional_id("correlation_id", command.correlation_id)
    # Integer bounds are those of the Avro type carrying the field (assessment_command.avsc):
    # a value beyond them would pass here and fail to encode, after the command was accepted.
    _integer("expected_version", command.expected_version)
    match command:
        case Create():
            _json_document("request", command.request, max_json_bytes)
            _integer("processing_timeout_ms", command.processing_timeout_ms)
            _integer("max_retries", command.max_retries, high=INT32_MAX)
        case UpdateProgress():
            p = command.progress
            if isinstance(p, bool) or not isinstance(p, int):
                raise ValidationError("progress", f"must be an integer, got {type(p).__name__}")
            if not 0 <= p <= 100:
                raise ValidationError("progress", f"must be between 0 and 100, got {p}")
            _text("message", command.message)
        case Complete():
            _json_document("result", command.result, max_json_bytes)
            _integer("duration_ms", command.duration_ms)
        case Fail():
            _text("error", command.error, required=True)
            _integer("duration_ms", command.duration_ms)
        case Cancel():
            _text("reason", command.reason)
        case Start():
            _text("worker", command.worker)
        case ExpireDeadline():
            _integer("timeout_ms", command.timeout_ms)
        case Retry():
            pass


def _elapsed_ms(current: Assessment, now: datetime) -> int:
    since = current.started_at or current.created_at
    return max(0, int((now - since).total_seconds() * 1000))


def decide(
    current: Assessment | None,
    command: Command,
    now: datetime,
    *,
    source: EventSource = EventSource.STORE,
    max_json_bytes: int = 1_000_000,
    default_max_retries: int | None = None,
    occurred_at: datetime | None = None,
) -> Event:
    """The event ``command`` produces against ``current``, or the reason it is refused.

    ``now`` is the event's ``recorded_at``. ``occurred_at`` (a legacy emission's time) becomes the
    event's ``occurred_at`` and the clock of the computed durations; a time after ``now`` (a clock
    ahead of ours) is taken as ``now``: no event claims to come from the future.
    """
    at = now if occurred_at is None or occurred_at > now else occurred_at
    validate_command(command, max_json_bytes)
    name = transition_name(command)
    aid = command.assessment_id
    actual = current.version if current is not None else 0
    if command.expected_version is not None and command.expected_version != actual:
        raise VersionConflict(aid, command.expected_version, actual)

    payload: Payload
    if isinstance(command, Create):
        if current is not None:
            raise InvalidTransition(aid, current.state.value, name)
        payload = Created(command.request, command.processing_timeout_ms, command.max_retries)
    else:
        if current is None:
            raise AssessmentNotFound(aid)
        if current.state not in _ALLOWED[type(command)]:
            raise InvalidTransition(aid, current.state.value, name)
        match command:
            case Start():
                payload = Started(command.worker)
            case UpdateProgress():
                payload = _progress_updated(command.progress, command.message)
            case Complete():
                duration = command.duration_ms
                payload = Completed(command.result, duration if duration is not None else _elapsed_ms(current, at))
            case Fail():
                duration = command.duration_ms
                payload = Failed(command.error, command.retryable,
                                 duration if duration is not None else _elapsed_ms(current, at))
            case Cancel():
                payload = Cancelled(command.reason)
            case ExpireDeadline():
                if current.started_at != command.started_at:
                    # Restarted since the deadline was computed: that deadline no longer applies.
                    raise InvalidTransition(aid, current.state.value, f"{name} (stale: restarted since)")
                payload = Failed(
                    f"deadline exceeded: still PROCESSING {command.timeout_ms} ms after start",
                    True,
                    _elapsed_ms(current, now),
                )
            case Retry():
                limit = current.max_retries if current.max_retries is not None else default_max_retries
                if limit is not None and current.retry_count >= limit:
                    raise InvalidTransition(aid, current.state.value, f"retry (limit of {limit} reached)")
                payload = Retried(current.retry_count + 1)
            case _:  # pragma: no cover - exhaustive above
                raise AssertionError(command)
    # Every field in order (see Event): built per accepted command, so not by the frozen __init__.
    return _new_event(aid, actual + 1, payload, at, now, source, new_id(), command.correlation_id,
                      command.command_id)


def evolve(current: Assessment | None, event: Event) -> Assessment:
    """Fold one event. The caller guarantees ``event.version == current.version + 1``."""
    p = event.payload
    at = event.occurred_at
    if isinstance(p, Created):
        return Assessment(
            assessment_id=event.assessment_id,
            state=State.PENDING,
            version=event.version,
            progress=0,
            message=None,
            created_at=at,
            updated_at=at,
            request_data=p.request,
            processing_timeout_ms=p.processing_timeout_ms,
            max_retries=p.max_retries,
            last_event_id=event.event_id,
        )
    if current is None:
        raise AssessmentNotFound(event.assessment_id)
    # One copy per event: the changes every event makes (version, updated_at, last_event_id), then
    # the payload's, in the order of the replacer's fields above.
    v, e = event.version, event.event_id
    match p:
        case ProgressUpdated():
            return _progressed(current, v, at, e, p.progress, p.message)
        case Started():
            return _started(current, v, at, e, State.PROCESSING, at)
        case Completed():
            return _completed(current, v, at, e, State.COMPLETED, 100, p.result, p.duration_ms, at)
        case Failed():
            return _failed(current, v, at, e, State.FAILED, p.error, p.retryable, p.duration_ms, at)
        case Cancelled():
            return _cancelled(current, v, at, e, State.CANCELLED, p.reason, at)
        case Retried():
            return _retried(current, v, at, e, State.PENDING, p.retry_count, 0, None, None, None, None, None)
    raise AssertionError(p)  # pragma: no cover
