"""Legacy message -> store commands, or a rejection with its reason. Pure: no I/O.

Input: the bytes of one record of ``legacy.assessment-events``, as the Node tap writes them::

    {"event": "assessment.completed", "data": {"assessmentId": "...", "status": "completed", ...},
     "emittedAt": "2024-05-01T12:00:00.123Z", "seq": 42, "emitter": "api-host-1234"}

Output: ``Translation`` (the commands, in the order they must be sent) or ``Rejection`` (kind,
field, reason). ``translate`` never raises on any input.

**Validation.** Every field is checked and a refusal names it: the record must be at most
``max_message_bytes``, UTF-8, a JSON object (no NaN/Infinity, no lone surrogate escapes) with
``event`` one of the six legacy event names, ``data`` an object, ``emittedAt`` an ISO-8601 string,
``seq`` a non-negative integer and ``emitter`` a non-empty string. In ``data``: ``assessmentId``
is required (a valid store id); ``status``, when present, must be one of ``pending``,
``processing``, ``completed``, ``failed``, ``cancelled`` (mapped to the state of the same
name; an unknown status is **rejected**, not turned into FAILED) and
must agree with the event (``assessment.progress`` with ``pending`` or ``processing``, each other
event with its own status); ``progress`` (required for ``assessment.progress``) a number in
0..100, ``duration`` a number >= 0 (fractions are cut off), ``message``/``error`` strings,
``timestamp`` ISO-8601; ``request``/``result`` any JSON within the store's size limit. Finally
the store's own field checks (``validate_command``) run, so nothing the processor would refuse as
invalid leaves the bridge.

**Command ids.** The identity of an emission is ``(emitter, seq, emittedAt, event,
assessmentId)``: a re-delivery (the tap retries after an ambiguous failure) repeats all five;
``seq`` alone is not enough because a restarted tap starts again at 1 under the same emitter id,
but its ``emittedAt`` differs. The message's own command id is ``legacy:`` + 24 hex digits of
SHA-256 over those five values; commands synthesised for it (below) get ``<that id>:create`` and
``<that id>:start``. The command processor answers a known command id with its first outcome and
appends nothing, so re-delivery, or re-reading the whole topic from offset 0, adds no event.

**Out-of-order input: the rule.** Each message becomes exactly one command of its own
(created -> Create, started -> Start, progress -> UpdateProgress, completed -> Complete,
failed -> Fail, cancelled -> Cancel), always sent, and the store's state machine is the judge of
whether it applies. Before it, the bridge *synthesises* the missing steps an earlier message
should have produced, judged by a small per-assessment view of what the bridge has sent (and, in
the consumer, what the projection already holds):

=================  ================================  ===============================
message            assessment unknown to the bridge  known as PENDING
=================  ================================  ===============================
started            Create                            -
progress           Create (+ Start if status is      Start if status is
                   ``processing``)                   ``processing``
completed          Create, Start                     Start
failed             Create, Start                     -
cancelled          Create                            -
=================  ================================  ===============================

A synthesised Create carries ``data.request`` when the message has one (else null). Nothing is
synthesised for an assessment the view knows as PROCESSING or finished: a message that arrives
too late (progress after completion, a second completion, a start after a failure) is sent as it
is and *rejected by the processor* (``InvalidTransition``), which appends no event and records
the rejection in ``projection.command_outcomes`` (``bridge_rejections`` lists them). So nothing
crashes and nothing is dropped: every message is translated (and then accepted or rejected by
the store, both inspectable) or dead-lettered with its reason.

The view is a hint, not the truth: if it is wrong (evicted, or another writer moved the
assessment), a synthesised Create is rejected as ``InvalidTransition`` and nothing else happens.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from assessment_store.core import (
    JSON,
    Cancel,
    Command,
    Complete,
    Create,
    Fail,
    Start,
    State,
    UpdateProgress,
    ValidationError,
    validate_command,
)

from ._legacy import (
    COMMAND_FIELDS,
    LegacyEvent,
    RejectKind,
    Rejection,
    _Reject,
    assessment_id,
    decode_json_object,
    field_value,
    is_missing,
    json_value,
    optional_number,
    optional_str,
    optional_timestamp,
    parse_timestamp,
    required,
    stable_id,
    store_state,
)

__all__ = [
    "COMMAND_ID_PREFIX",
    "LegacyMessage",
    "LegacyView",
    "TranslateLimits",
    "Translation",
    "check_commands",
    "parse_message",
    "plan_commands",
    "translate",
    "translate_message",
]

COMMAND_ID_PREFIX = "legacy:"
FAILED_WITHOUT_ERROR = "failed in the legacy system (no error message given)"

# The statuses a message may carry with its event (a present status must be one of them).
_EVENT_STATUSES: dict[LegacyEvent, frozenset[State]] = {
    LegacyEvent.CREATED: frozenset({State.PENDING}),
    LegacyEvent.STARTED: frozenset({State.PROCESSING}),
    LegacyEvent.PROGRESS: frozenset({State.PENDING, State.PROCESSING}),
    LegacyEvent.COMPLETED: frozenset({State.COMPLETED}),
    LegacyEvent.FAILED: frozenset({State.FAILED}),
    LegacyEvent.CANCELLED: frozenset({State.CANCELLED}),
}


@dataclass(frozen=True, slots=True)
class TranslateLimits:
    max_message_bytes: int = 1_000_000
    """Larger records are dead-lettered unread (the tap's own limit is 900,000)."""
    max_json_bytes: int = 1_000_000
    """The store's limit on a request/result document (``Settings.max_request_bytes``)."""


@dataclass(frozen=True, slots=True)
class LegacyMessage:
    """One checked legacy message."""

    event: LegacyEvent
    assessment_id: str
    emitter: str
    seq: int
    emitted_at: str
    """As written by the tap: part of the identity, so never re-formatted."""
    occurred_at: datetime
    """``emitted_at`` parsed (UTC when it has no offset): the events' ``occurred_at``."""
    status: State | None
    progress: int | None
    message: str | None
    request: JSON
    result: JSON
    error: str | None
    duration_ms: int | None

    @property
    def command_id(self) -> str:
        return stable_id(
            COMMAND_ID_PREFIX, self.emitter, self.seq, self.emitted_at, self.event.value, self.assessment_id
        )

    @property
    def correlation_id(self) -> str:
        """Where the message came from, readable in every event it causes."""
        return f"legacy:{self.emitter}#{self.seq}@{self.emitted_at}"


@dataclass(frozen=True, slots=True)
class Translation:
    message: LegacyMessage
    commands: tuple[Command, ...]
    """Synthesised commands first, the message's own command last."""

    @property
    def synthesised(self) -> int:
        return len(self.commands) - 1


class LegacyView:
    """What the bridge believes each assessment's state is after the commands it has sent:
    enough to decide what to synthesise. Bounded: the least recently used entries are evicted
    (an evicted assessment reads as unknown, which at worst synthesises a Create the store
    refuses)."""

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._states: OrderedDict[str, State] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, assessment_id: object) -> bool:
        return assessment_id in self._states

    def state_of(self, assessment_id: str) -> State | None:
        state = self._states.get(assessment_id)
        if state is not None:
            self._states.move_to_end(assessment_id)
        return state

    def seed(self, assessment_id: str, state: State) -> None:
        """Learn a state from elsewhere (the projection), unless the view already knows better."""
        if assessment_id not in self._states:
            self._put(assessment_id, state)

    def apply(self, commands: tuple[Command, ...]) -> None:
        """Advance the view as the store will if it accepts the commands; an illegal step (one the
        store will reject) leaves the view as it is."""
        for c in commands:
            current = self._states.get(c.assessment_id)
            nxt = _next_state(current, c)
            if nxt is not None:
                self._put(c.assessment_id, nxt)

    def _put(self, assessment_id: str, state: State) -> None:
        self._states[assessment_id] = state
        self._states.move_to_end(assessment_id)
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)


def _next_state(current: State | None, c: Command) -> State | None:
    """The state after ``c`` if the store's state machine allows it from ``current``, else None."""
    match c:
        case Create():
            return State.PENDING if current is None else None
        case Start():
            return State.PROCESSING if current is State.PENDING else None
        case UpdateProgress():
            return current if current in (State.PENDING, State.PROCESSING) else None
        case Complete():
            return State.COMPLETED if current is State.PROCESSING else None
        case Fail():
            return State.FAILED if current in (State.PENDING, State.PROCESSING) else None
        case Cancel():
            return State.CANCELLED if current in (State.PENDING, State.PROCESSING) else None
    return None


# --- parsing ------------------------------------------------------------------------------------

def parse_message(raw: bytes | None, limits: TranslateLimits = TranslateLimits()) -> LegacyMessage | Rejection:
    """Check every field of one legacy record; never raises on any input."""
    try:
        return _parse(raw, limits)
    except _Reject as e:
        return e.rejection()


def _parse(raw: bytes | None, limits: TranslateLimits) -> LegacyMessage:
    obj = decode_json_object(raw, max_bytes=limits.max_message_bytes, what="message")
    name = required(obj, "event", "event", str, "string")
    try:
        event = LegacyEvent(name)
    except ValueError as e:
        known = ", ".join(ev.value for ev in LegacyEvent)
        raise _Reject(RejectKind.UNKNOWN_EVENT, "event", f"unknown event {name[:80]!r} (known: {known})") from e
    data: dict[str, Any] = required(obj, "data", "data", dict, "object")
    emitter = required(obj, "emitter", "emitter", str, "string")
    if not emitter.strip() or len(emitter) > 200 or not emitter.isprintable():
        raise _Reject(RejectKind.INVALID_VALUE, "emitter", "must be a non-empty printable string of at most 200 characters")
    seq = required(obj, "seq", "seq", int, "integer")
    if seq < 0:
        raise _Reject(RejectKind.INVALID_VALUE, "seq", f"must be a non-negative integer, got {seq}")
    emitted_at = required(obj, "emittedAt", "emittedAt", str, "string")
    occurred_at = parse_timestamp(emitted_at, "emittedAt")

    aid = assessment_id(data, "assessmentId", "data.assessmentId")
    state = store_state(data, "status", "data.status")
    if state is not None and state not in _EVENT_STATUSES[event]:
        raise _Reject(
            RejectKind.STATUS_MISMATCH, "data.status",
            f"{data['status']!r} contradicts event {event.value!r} (expected "
            f"{' or '.join(repr(s.value.lower()) for s in sorted(_EVENT_STATUSES[event]))})",
        )
    progress = optional_number(data, "progress", "data.progress", low=0, high=100)
    if event is LegacyEvent.PROGRESS and progress is None:
        value = field_value(data, "progress")
        raise _Reject(RejectKind.MISSING_FIELD, "data.progress",
                      f"is {'required' if is_missing(value) else 'null'} for {event.value}")
    duration = optional_number(data, "duration", "data.duration", low=0, high=None)
    optional_timestamp(data, "timestamp", "data.timestamp")
    return LegacyMessage(
        event=event,
        assessment_id=aid,
        emitter=emitter,
        seq=seq,
        emitted_at=emitted_at,
        occurred_at=occurred_at,
        status=state,
        progress=progress,
        message=optional_str(data, "message", "data.message"),
        request=json_value(data, "request"),
        result=json_value(data, "result"),
        error=optional_str(data, "error", "data.error"),
        duration_ms=duration,
    )


# --- planning -----------------------------------------------------------------------------------

def plan_commands(msg: LegacyMessage, known: State | None) -> tuple[Command, ...]:
    """The commands for ``msg`` when the bridge believes the assessment is in state ``known``
    (None: unknown): the synthesised steps of the module docstring's table, then its own."""
    mid = msg.command_id
    common: dict[str, Any] = {"assessment_id": msg.assessment_id, "correlation_id": msg.correlation_id}
    steps: list[Command] = []

    def create() -> None:
        steps.append(Create(command_id=f"{mid}:create", request=msg.request, **common))

    def start() -> None:
        steps.append(Start(command_id=f"{mid}:start", **common))

    match msg.event:
        case LegacyEvent.CREATED:
            own: Command = Create(command_id=mid, request=msg.request, **common)
        case LegacyEvent.STARTED:
            if known is None:
                create()
            own = Start(command_id=mid, **common)
        case LegacyEvent.PROGRESS:
            wants_processing = msg.status is State.PROCESSING
            if known is None:
                create()
            if wants_processing and known in (None, State.PENDING):
                start()
            assert msg.progress is not None  # required for this event by _parse
            own = UpdateProgress(command_id=mid, progress=msg.progress, message=msg.message, **common)
        case LegacyEvent.COMPLETED:
            if known is None:
                create()
            if known in (None, State.PENDING):
                start()
            own = Complete(command_id=mid, result=msg.result, duration_ms=msg.duration_ms, **common)
        case LegacyEvent.FAILED:
            if known is None:
                create()
                start()
            error = msg.error if msg.error is not None and msg.error.strip() else FAILED_WITHOUT_ERROR
            own = Fail(command_id=mid, error=error, duration_ms=msg.duration_ms, **common)
        case LegacyEvent.CANCELLED:
            if known is None:
                create()
            own = Cancel(command_id=mid, **common)
    steps.append(own)
    return tuple(steps)


def check_commands(commands: tuple[Command, ...], max_json_bytes: int, field_prefix: str = "data.") -> None:
    """The store's own field checks, with the refused field named as the legacy field."""
    for c in commands:
        try:
            validate_command(c, max_json_bytes)
        except ValidationError as e:
            # A nested path (``request.a[0]``) is named under its legacy field (``data.request.a[0]``).
            cut = min((i for i in (e.field.find("."), e.field.find("[")) if i >= 0), default=len(e.field))
            legacy = COMMAND_FIELDS.get(e.field[:cut])
            field = f"{field_prefix}{legacy}{e.field[cut:]}" if legacy else e.field
            raise _Reject(RejectKind.INVALID_VALUE, field, e.reason) from e


def translate(
    raw: bytes | None, view: LegacyView, limits: TranslateLimits = TranslateLimits()
) -> Translation | Rejection:
    """Parse, plan against ``view`` and check; on success the view advances. Never raises."""
    msg = parse_message(raw, limits)
    if isinstance(msg, Rejection):
        return msg
    return translate_message(msg, view, limits)


def translate_message(
    msg: LegacyMessage, view: LegacyView, limits: TranslateLimits = TranslateLimits()
) -> Translation | Rejection:
    """``translate`` for an already parsed message."""
    commands = plan_commands(msg, view.state_of(msg.assessment_id))
    try:
        check_commands(commands, limits.max_json_bytes)
    except _Reject as e:
        return e.rejection()
    view.apply(commands)
    return Translation(msg, commands)
