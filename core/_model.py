"""The store's vocabulary: states, events, commands and the folded assessment.

All of them are frozen dataclasses: they are built at the edges (CLI, client calls, the
codec) and never change afterwards, so a fold can share them freely.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import os
import time
import types
from dataclasses import dataclass, field
from datetime import datetime
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias, TypeVar

__all__ = [
    "JSON",
    "Outcome",
    "Assessment",
    "Cancel",
    "Cancelled",
    "Command",
    "CommandEnvelope",
    "Complete",
    "Completed",
    "Create",
    "Created",
    "Event",
    "EventSource",
    "EventType",
    "ExpireDeadline",
    "Fail",
    "Failed",
    "Payload",
    "ProgressUpdated",
    "Retried",
    "Retry",
    "Start",
    "Started",
    "State",
    "UpdateProgress",
    "new_id",
    "slot_constructor",
    "slot_replacer",
]

_T = TypeVar("_T")

JSON: TypeAlias = Any
"""A JSON-compatible value (dict, list, str, int, float, bool or None)."""


def new_id() -> str:
    """A time-ordered (version 7, RFC 9562) UUID in its canonical text form: the Unix time in
    milliseconds in the first 48 bits, 74 random bits after the version and variant.

    Why time-ordered: event ids are unique-indexed in ``assessment_events``, command ids are
    ``command_outcomes``' primary key (the client makes them with this function), and assessment
    ids made here are ``assessments``' primary key. Random ids land on a random leaf page of each
    b-tree, so every insertion reads a different page, and each checkpoint's first touch of it
    writes a whole page to the WAL; ids of the same millisecond land on the same rightmost pages
    (docs/decisions/0005-time-ordered-ids.md has the figures). Uniqueness rests on the 74 random
    bits, not on the clock: a clock stepping back only costs locality. 0.35 µs an id (the random
    parts are made 256 at a time), against 2.7 for ``str(uuid.uuid4())``."""
    ms = time.time_ns() // 1_000_000
    cached = _prefix
    if cached[0] != ms:
        digits = f"{ms & 0xFFFF_FFFF_FFFF:012x}"
        cached = (ms, f"{digits[:8]}-{digits[8:]}")
        _set_prefix(cached)
    try:
        return cached[1] + next(_tails)
    except StopIteration:
        return cached[1] + _refill()


def _fresh_tails(n: int = 256) -> list[str]:
    """``n`` random tails ``-7xxx-yxxx-xxxxxxxxxxxx`` (version 7, variant binary 10) from one
    ``os.urandom`` call, formatted with strided byte copies instead of slicing each."""
    raw = bytearray(os.urandom(10 * n))
    raw[0::10] = raw[0::10].translate(_VERSION_7)  # version 7 in the 13th hex digit of the id
    raw[2::10] = raw[2::10].translate(_VARIANT_10)  # variant binary 10 in the top bits of the 17th
    digits = raw.hex().encode()
    text = bytearray(b"-" * (24 * n))  # 23 characters and a separator per tail; the dashes stay
    for j, pos in enumerate(_TAIL_PLACES):
        text[pos::24] = digits[j::20]
    text[23::24] = b" " * n
    return text.decode().split()


def _set_prefix(prefix: tuple[int, str]) -> None:
    # One tuple, replaced whole: a thread reading it never sees one millisecond's number with
    # another's text.
    global _prefix
    _prefix = prefix


def _refill() -> str:
    # Another thread may refill at the same time: each draws its own fresh tails, and ``next`` on
    # a list iterator hands each tail to one caller only, so no tail is given twice.
    global _tails
    fresh = iter(_fresh_tails())
    _tails = fresh
    return next(fresh)


def _forget_ids() -> None:
    # A forked child must not hand out the random parts its parent still holds.
    global _tails
    _tails = iter(())


_VERSION_7 = bytes((b & 0x0F) | 0x70 for b in range(256))
_VARIANT_10 = bytes((b & 0x3F) | 0x80 for b in range(256))
_TAIL_PLACES = [i for i in range(23) if i not in (0, 5, 10)]
_tails: Iterator[str] = iter(())
_prefix: tuple[int, str] = (-1, "")
os.register_at_fork(after_in_child=_forget_ids)


class State(str, enum.Enum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (State.COMPLETED, State.CANCELLED)

    @property
    def finished(self) -> bool:
        """No further work will happen without an explicit retry."""
        return self in (State.COMPLETED, State.FAILED, State.CANCELLED)


class EventSource(str, enum.Enum):
    STORE = "store"
    LEGACY_BRIDGE = "legacy-bridge"
    MIGRATION = "migration"


class EventType(str, enum.Enum):
    CREATED = "AssessmentCreated"
    STARTED = "AssessmentStarted"
    PROGRESS_UPDATED = "ProgressUpdated"
    COMPLETED = "AssessmentCompleted"
    FAILED = "AssessmentFailed"
    CANCELLED = "AssessmentCancelled"
    RETRIED = "AssessmentRetried"


# --- event payloads ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Created:
    request: JSON
    processing_timeout_ms: int | None = None
    max_retries: int | None = None


@dataclass(frozen=True, slots=True)
class Started:
    worker: str | None = None


@dataclass(frozen=True, slots=True)
class ProgressUpdated:
    progress: int
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Completed:
    result: JSON
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    error: str
    retryable: bool = False
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Cancelled:
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Retried:
    retry_count: int


Payload: TypeAlias = Created | Started | ProgressUpdated | Completed | Failed | Cancelled | Retried

PAYLOAD_TYPES: dict[type[Any], EventType] = {
    Created: EventType.CREATED,
    Started: EventType.STARTED,
    ProgressUpdated: EventType.PROGRESS_UPDATED,
    Completed: EventType.COMPLETED,
    Failed: EventType.FAILED,
    Cancelled: EventType.CANCELLED,
    Retried: EventType.RETRIED,
}


@dataclass(frozen=True, slots=True)
class Event:
    """One accepted state transition: the unit of the log."""

    assessment_id: str
    version: int
    payload: Payload
    occurred_at: datetime
    recorded_at: datetime
    source: EventSource = EventSource.STORE
    event_id: str = field(default_factory=new_id)
    correlation_id: str | None = None
    causation_id: str | None = None

    @property
    def type(self) -> EventType:
        return PAYLOAD_TYPES[type(self.payload)]


# --- commands --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _CommandBase:
    assessment_id: str
    command_id: str = field(default_factory=new_id)
    expected_version: int | None = None
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Create(_CommandBase):
    request: JSON
    processing_timeout_ms: int | None = None
    max_retries: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Start(_CommandBase):
    worker: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateProgress(_CommandBase):
    progress: int
    message: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Complete(_CommandBase):
    result: JSON
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Fail(_CommandBase):
    error: str
    retryable: bool = False
    duration_ms: int | None = None
    """A duration measured elsewhere (the legacy system); None: the store computes it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel(_CommandBase):
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry(_CommandBase):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpireDeadline(_CommandBase):
    """Issued by the command processor when an assessment stays PROCESSING past its deadline."""

    started_at: datetime
    timeout_ms: int


Command: TypeAlias = Create | Start | UpdateProgress | Complete | Fail | Cancel | Retry | ExpireDeadline


@dataclass(frozen=True, slots=True)
class CommandEnvelope:
    """A command as it travels on the commands topic."""

    command: Command
    issued_at: datetime
    source: EventSource = EventSource.STORE
    occurred_at: datetime | None = None
    """When the change happened where it came from (a legacy emission, a legacy export's timestamps);
    it becomes the event's ``occurred_at``. None: when the processor decides (the store's own writes)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What became of one command: accepted (with the event it produced) or rejected (with why).

    Built with keywords only: eleven fields, several of the same type, where a position carries no meaning."""

    command_id: str
    assessment_id: str
    accepted: bool
    processed_at: datetime
    command_offset: int
    version: int | None = None
    event_id: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    error_details: dict[str, JSON] | None = None
    duplicate: bool = False


# --- the folded state ----------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True, slots=True)
class Assessment:
    """The current state of one assessment, as folded from its events."""

    assessment_id: str
    state: State
    version: int
    progress: int
    message: str | None
    created_at: datetime
    updated_at: datetime
    request_data: JSON
    result_data: JSON = None
    error_message: str | None = None
    retry_count: int = 0
    duration: int | None = None
    """Milliseconds from start (or creation) to completion or failure."""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    retryable: bool | None = None
    cancel_reason: str | None = None
    processing_timeout_ms: int | None = None
    max_retries: int | None = None
    last_event_id: str | None = None

    def to_json(self) -> dict[str, JSON]:
        """camelCase JSON, the field names of the legacy API."""
        return {
            "assessmentId": self.assessment_id,
            "state": self.state.value,
            "version": self.version,
            "progress": self.progress,
            "message": self.message,
            "createdAt": _iso(self.created_at),
            "updatedAt": _iso(self.updated_at),
            "requestData": self.request_data,
            "resultData": self.result_data,
            "errorMessage": self.error_message,
            "retryCount": self.retry_count,
            "duration": self.duration,
            "startedAt": _iso(self.started_at),
            "finishedAt": _iso(self.finished_at),
            "retryable": self.retryable,
            "cancelReason": self.cancel_reason,
        }

    def replace(self, **changes: Any) -> Assessment:
        """A copy with ``changes``. Not ``dataclasses.replace``: that goes through the frozen
        ``__init__`` and re-reads every field's metadata, and was the largest cost of a fold (one
        copy per event). A name that is not a field fails, as with a slotted class's attribute."""
        values = list(_assessment_values(self))
        for name, value in changes.items():
            try:
                values[_ASSESSMENT_INDEX[name]] = value
            except KeyError:
                raise AttributeError(f"'Assessment' has no field {name!r}") from None
        return _make_assessment(*values)


def slot_constructor(cls: type[_T]) -> Callable[..., _T]:
    """A function taking every field of the frozen slotted dataclass ``cls``, positionally in field
    order, and returning the instance ``cls(...)`` would: for the hot paths that build one per record.

    Generated code, as ``dataclasses`` generates ``__init__``. The frozen ``__init__`` calls
    ``object.__setattr__`` by name per field, which looks the name up on the class each time. When
    ``cls`` derives from ``object`` alone, the function fills an instance of a plain (not frozen)
    class with the very same slots by ordinary assignments, and then makes ``cls`` its class: the
    layouts are the same, so CPython allows the ``__class__`` assignment, and no frozen
    ``__setattr__`` runs (an ``Assessment``, 19 fields: 0.29 against 0.94 µs through each slot's
    member descriptor, and 1.9 through ``__init__``). A class with a slotted base (the commands)
    cannot be built so: its twin would have to derive from that frozen base, whose ``__setattr__``
    refuses the assignments. It is filled through each slot's member descriptor instead. Either way
    it applies no defaults, and the classes here have no ``__post_init__`` (checked) for it to skip.
    """
    assert not hasattr(cls, "__post_init__"), cls
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]  # any dataclass
    if _swappable(cls, names):
        make = _class_swapping(cls, names, {name: name for name in names})
    else:
        make = _descriptor_constructor(cls, names)
    make.__qualname__ = f"slot_constructor.<{cls.__name__}>"
    return make


def slot_replacer(cls: type[_T], changed: tuple[str, ...]) -> Callable[..., _T]:
    """A function ``(instance, *values)`` returning a copy of ``instance`` (a ``cls``) with the fields
    ``changed`` set to ``values``, in that order: ``replace`` for one fixed set of fields, without
    its keyword dict or its copy of every value into a list (the fold's copy per event). Built as
    ``slot_constructor`` builds, so ``cls`` must derive from ``object`` alone."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]  # any dataclass
    unknown = set(changed) - set(names)
    if unknown or len(set(changed)) != len(changed):
        raise AttributeError(f"{cls.__name__} fields to replace are not distinct fields: {changed!r}")
    if not _swappable(cls, names):
        raise TypeError(f"{cls.__name__} has a slotted base: slot_replacer builds only classes of object alone")
    values = {name: name if name in changed else f"__old.{name}" for name in names}
    replace = _class_swapping(cls, ["__old", *changed], values)
    replace.__qualname__ = f"slot_replacer.<{cls.__name__}:{','.join(changed)}>"
    return replace


def _swappable(cls: type[Any], names: list[str]) -> bool:
    """Whether an instance of a plain class with ``cls``'s slots can become a ``cls``: its only base is
    ``object`` and its slots are its fields (a slotted base's would have to be the twin's base too)."""
    return cls.__bases__ == (object,) and set(getattr(cls, "__slots__", ())) == set(names)


def _class_swapping(cls: type[_T], params: list[str], values: dict[str, str]) -> Callable[..., _T]:
    """``def f(*params)`` filling a plain twin of ``cls`` (the same slots) with ``values`` (field ->
    expression over the parameters), then making it a ``cls``. The function's own names are
    dunder-prefixed, so that no field's name shadows them."""
    scope: dict[str, Any] = {"__new": object.__new__, "__twin": _twin(cls), "__cls": cls}
    lines = [f"def f({', '.join(params)}):", "    __instance = __new(__twin)"]
    lines += [f"    __instance.{name} = {value}" for name, value in values.items()]
    lines += ["    __instance.__class__ = __cls", "    return __instance"]
    exec("\n".join(lines), scope)  # the text is built from the class's own field names
    f: Callable[..., _T] = scope["f"]
    return f


_TWINS: dict[type[Any], type[Any]] = {}


def _twin(cls: type[Any]) -> type[Any]:
    """The plain class with ``cls``'s slots whose instances ``_class_swapping``'s functions turn into
    ``cls``'s: one per class, shared by its constructor and its replacers."""
    twin = _TWINS.get(cls)
    if twin is None:
        attrs = {"__slots__": getattr(cls, "__slots__"), "__module__": cls.__module__}
        twin = _TWINS[cls] = type(f"_{cls.__name__}Slots", (), attrs)
    return twin


def _descriptor_constructor(cls: type[_T], names: list[str]) -> Callable[..., _T]:
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = [f"def make({', '.join(names)}):", "    new = _new(_cls)"]
    for i, name in enumerate(names):
        # A field of a slotted base class has its slot, and its descriptor, on that base.
        slot = next(c.__dict__[name] for c in cls.__mro__ if name in c.__dict__)
        assert isinstance(slot, types.MemberDescriptorType), (cls, name)
        scope[f"_set{i}"] = slot.__set__
        lines.append(f"    _set{i}(new, {name})")
    lines.append("    return new")
    exec("\n".join(lines), scope)  # the text is built from the class's own field names
    make: Callable[..., _T] = scope["make"]
    return make


_ASSESSMENT_FIELDS = tuple(f.name for f in dataclasses.fields(Assessment))
_ASSESSMENT_INDEX = {name: i for i, name in enumerate(_ASSESSMENT_FIELDS)}
_assessment_values = operator.attrgetter(*_ASSESSMENT_FIELDS)
_make_assessment = slot_constructor(Assessment)
