"""One line of a legacy export -> the commands that bring the store to that state. Pure: no I/O.

A line is one assessment (docs/legacy-format.md)::

    {"assessmentId": "...", "status": "completed", "progress": 100, "message": null, "request": {...},
     "result": {...}, "error": null, "timestamp": "...", "updatedAt": "...", "duration": 1234}

``status`` is required and mapped as docs/legacy-format.md says (an unknown one is
refused, never FAILED); the other fields are checked as in ``_translate`` (the refusal names the
field). The path to each exported state::

    pending     Create [, UpdateProgress]
    processing  Create, Start [, UpdateProgress]
    completed   Create, Start [, UpdateProgress when a message was exported], Complete(result, duration)
    failed      Create, Start [, UpdateProgress], Fail(error, duration)
    cancelled   Create [, UpdateProgress], Cancel

(UpdateProgress when the exported progress is above 0 or a message was exported.)

A pending or processing line whose ``updatedAt`` is later than the last step planned for it (a pending
assessment at progress 0 without a message: only its Create, at ``timestamp``; or one the store
already holds at an earlier ``updated_at``) gets an UpdateProgress with its own progress and message
at ``updatedAt``: legacy reported that progress then. Without it the store's ``updated_at`` would stay
at the creation time and lose legacy's ``updatedAt`` (docs/legacy-format.md, "Exports"). Its command id
includes ``updatedAt``, so a later export of the same assessment touched again is not taken for it.

Against the
assessment's current state in the store only the missing steps are planned: nothing when the
store already holds that state (or is further along the lifecycle - the live bridge got there
first), and a ``conflict`` rejection when the store holds a *different* final state.

Command ids depend on the line's content only (``legacy-import:`` + hash of the assessment id,
the step, and for progress its value and message), never on the store's state: a plan computed
again after an interruption re-sends the same ids, which the processor answers with their first
outcome and no new event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from assessment_store.core import JSON, Assessment, Cancel, Command, Complete, Create, Fail, Start, State, UpdateProgress

from ._legacy import (
    RejectKind,
    Rejection,
    _Reject,
    assessment_id,
    decode_json_object,
    json_value,
    optional_number,
    optional_str,
    optional_timestamp,
    parse_timestamp,
    stable_id,
    store_state,
)
from ._translate import FAILED_WITHOUT_ERROR, check_commands

__all__ = ["IMPORT_ID_PREFIX", "ExportRecord", "ImportPlan", "parse_export_line", "plan_import"]

IMPORT_ID_PREFIX = "legacy-import:"

_RANK = {None: 0, State.PENDING: 1, State.PROCESSING: 2, State.COMPLETED: 3, State.FAILED: 3, State.CANCELLED: 3}


@dataclass(frozen=True, slots=True)
class ExportRecord:
    assessment_id: str
    state: State
    progress: int
    message: str | None
    request: JSON
    result: JSON
    error: str | None
    duration_ms: int | None
    created_at: datetime | None = None
    """The export's ``timestamp``: the Create's occurred_at."""
    updated_at: datetime | None = None
    """The export's ``updatedAt``: the occurred_at of every later step (the export has no finer history)."""

    def occurred_at(self, command: Command) -> datetime | None:
        """When ``command``'s step happened in the legacy system, as far as the export tells."""
        if isinstance(command, Create):
            return self.created_at or self.updated_at
        return self.updated_at or self.created_at


@dataclass(frozen=True, slots=True)
class ImportPlan:
    commands: tuple[Command, ...]
    """Empty when the store already holds the exported state (or is further along)."""
    store_ahead: bool = False
    """The store is past the exported state (e.g. the live bridge completed it since the export)."""


def parse_export_line(raw: bytes, *, max_bytes: int) -> ExportRecord | Rejection:
    """Check every field of one export line; never raises on any input."""
    try:
        obj = decode_json_object(raw, max_bytes=max_bytes, what="line")
        aid = assessment_id(obj, "assessmentId", "assessmentId")
        if obj.get("status") is None:
            raise _Reject(RejectKind.MISSING_FIELD, "status", "is required" if "status" not in obj else "is null")
        state = store_state(obj, "status", "status")
        assert state is not None
        created = optional_timestamp(obj, "timestamp", "timestamp")
        updated = optional_timestamp(obj, "updatedAt", "updatedAt")
        return ExportRecord(
            assessment_id=aid,
            state=state,
            progress=optional_number(obj, "progress", "progress", low=0, high=100) or 0,
            message=optional_str(obj, "message", "message"),
            request=json_value(obj, "request"),
            result=json_value(obj, "result"),
            error=optional_str(obj, "error", "error"),
            duration_ms=optional_number(obj, "duration", "duration", low=0, high=None),
            created_at=None if created is None else parse_timestamp(created, "timestamp"),
            updated_at=None if updated is None else parse_timestamp(updated, "updatedAt"),
        )
    except _Reject as e:
        return e.rejection()


def plan_import(
    record: ExportRecord, current: Assessment | None, *, max_json_bytes: int, correlation_id: str | None = None
) -> ImportPlan | Rejection:
    """The commands that take ``current`` (None: absent from the store) to ``record``'s state."""
    aid = record.assessment_id
    common: dict[str, Any] = {"assessment_id": aid, "correlation_id": correlation_id}

    def cid(*step: object) -> str:
        return stable_id(IMPORT_ID_PREFIX, aid, *step)

    target = record.state
    have = current.state if current is not None else None
    if _RANK[have] > _RANK[target]:
        return ImportPlan((), store_ahead=True)
    if _RANK[have] == 3:
        if have is target:
            return ImportPlan(())
        return Rejection(RejectKind.CONFLICT, "status",
                         f"status: the store holds {aid!r} as {have.value if have else None}, "
                         f"the export says {target.value.lower()!r}; nothing imported")

    steps: list[Command] = []
    if have is None:
        steps.append(Create(command_id=cid("create"), request=record.request, **common))
    if target is not State.PENDING and target is not State.CANCELLED and _RANK[have] < 2:
        steps.append(Start(command_id=cid("start"), **common))
    wants_progress = (record.message is not None) if target is State.COMPLETED else (
        record.progress > 0 or record.message is not None)
    if wants_progress and (
        current is None
        or (record.progress >= current.progress and (record.progress, record.message) != (current.progress, current.message))
    ):
        steps.append(UpdateProgress(command_id=cid("progress", record.progress, record.message),
                                    progress=record.progress, message=record.message, **common))
    if (target is State.PENDING or target is State.PROCESSING) and not any(
            not isinstance(step, Create) for step in steps) and _needs_touch(record, current):
        assert record.updated_at is not None
        steps.append(UpdateProgress(
            command_id=cid("progress-at", record.progress, record.message, record.updated_at.isoformat()),
            progress=record.progress, message=record.message, **common))
    match target:
        case State.COMPLETED:
            steps.append(Complete(command_id=cid("complete"), result=record.result,
                                  duration_ms=record.duration_ms, **common))
        case State.FAILED:
            error = record.error if record.error is not None and record.error.strip() else FAILED_WITHOUT_ERROR
            steps.append(Fail(command_id=cid("fail"), error=error, duration_ms=record.duration_ms, **common))
        case State.CANCELLED:
            steps.append(Cancel(command_id=cid("cancel"), **common))
        case State.PENDING | State.PROCESSING:
            pass
    commands = tuple(steps)
    try:
        check_commands(commands, max_json_bytes, field_prefix="")
    except _Reject as e:
        return e.rejection()
    return ImportPlan(commands)


def _needs_touch(record: ExportRecord, current: Assessment | None) -> bool:
    """Whether only a progress step at ``updatedAt`` is missing: the store's ``updated_at`` would be earlier
    than the export's, while progress and message already agree (never moving progress backwards)."""
    if record.updated_at is None:
        return False
    if current is None:
        return record.created_at is not None and record.updated_at > record.created_at
    return (current.progress, current.message) == (record.progress, record.message) and \
        record.updated_at > current.updated_at
