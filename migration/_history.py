"""A store history against the state machine, and the projection against the fold of its events.

The projector folds whatever the log holds with ``evolve``, which trusts the writer: an event that the
processor's ``decide`` would have refused (a raw write to the events topic, a bug, a bad import) is
folded all the same. So the history itself is checked here, event by event, with the transitions
``decide`` allows (assessment_store/_domain.py), and then folded again to compare with the row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from assessment_store.core import (
    JSON,
    Assessment,
    AssessmentStoreError,
    Cancelled,
    Completed,
    Created,
    Event,
    EventSource,
    EventType,
    Failed,
    Payload,
    ProgressUpdated,
    Retried,
    Started,
    State,
    evolve,
)

from ._model import Finding, FindingKind

__all__ = ["check_history", "json_value"]

_PAYLOADS: dict[str, type[Payload]] = {
    EventType.CREATED.value: Created, EventType.STARTED.value: Started,
    EventType.PROGRESS_UPDATED.value: ProgressUpdated, EventType.COMPLETED.value: Completed,
    EventType.FAILED.value: Failed, EventType.CANCELLED.value: Cancelled, EventType.RETRIED.value: Retried,
}

# The states each event may follow: decide's _ALLOWED, by the event each command produces (Fail and
# ExpireDeadline both produce Failed; Create only on an absent assessment).
_ALLOWED_FROM: dict[type[Payload], frozenset[State | None]] = {
    Created: frozenset({None}),
    Started: frozenset({State.PENDING}),
    ProgressUpdated: frozenset({State.PENDING, State.PROCESSING}),
    Completed: frozenset({State.PROCESSING}),
    Failed: frozenset({State.PENDING, State.PROCESSING}),
    Cancelled: frozenset({State.PENDING, State.PROCESSING}),
    Retried: frozenset({State.FAILED}),
}


def json_value(value: object) -> JSON:
    """A field value as JSON can carry it (times as ISO-8601, states by name)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, State):
        return value.value
    return value


def _event(aid: str, row: dict[str, Any]) -> Event:
    cls = _PAYLOADS[str(row["type"])]
    payload = row["payload"]
    if not isinstance(payload, dict):
        raise TypeError(f"payload is a {type(payload).__name__}")
    return Event(
        assessment_id=aid, version=int(row["version"]), payload=cls(**payload), occurred_at=row["occurred_at"],
        recorded_at=row["recorded_at"], source=EventSource(row["source"]), event_id=str(row["event_id"]),
        correlation_id=row["correlation_id"], causation_id=row["causation_id"],
    )


def check_history(aid: str, rows: Sequence[dict[str, Any]], projected: Assessment | None) -> Iterator[Finding]:
    """Findings of one assessment's history (rows of projection.assessment_events in version order)
    and of its projected row against the fold of that history."""
    state: Assessment | None = None
    seen_commands: dict[str, int] = {}
    types = [str(r["type"]) for r in rows]
    for expected, row in enumerate(rows, start=1):
        version = int(row["version"])
        if version != expected:
            yield Finding(FindingKind.ILLEGAL_HISTORY, aid, "version",
                          (("expected", expected), ("found", version)), f"version gap in {types}")
        try:
            event = _event(aid, row)
        except (KeyError, TypeError, ValueError) as e:
            yield Finding(FindingKind.ILLEGAL_HISTORY, aid, "event", (("version", version), ("type", row["type"])),
                          f"unreadable event: {e}")
            return
        before = state.state if state is not None else None
        if before not in _ALLOWED_FROM[type(event.payload)]:
            yield Finding(FindingKind.ILLEGAL_HISTORY, aid, "transition",
                          (("from", before.value if before else None), ("event", event.type.value)),
                          f"{event.type.value} at version {version} from "
                          f"{before.value if before else 'nothing'}; history {types}")
        cause = event.causation_id
        if cause is not None:
            if cause in seen_commands:
                yield Finding(FindingKind.DUPLICATE, aid, "command",
                              (("first_version", seen_commands[cause]), ("again_version", version)),
                              f"command {cause!r} applied twice")
            else:
                seen_commands[cause] = version
        try:
            state = evolve(state, event)
        except AssessmentStoreError as e:
            yield Finding(FindingKind.ILLEGAL_HISTORY, aid, "event", (("version", version), ("type", event.type.value)),
                          f"cannot be folded: {e}")
            return
    if projected is None:
        return
    if state is None:
        yield Finding(FindingKind.PROJECTION_MISMATCH, aid, "history",
                      (("projection_version", projected.version), ("events", 0)), "a projected row without events")
        return
    for f in dataclasses.fields(Assessment):
        p, q = getattr(projected, f.name), getattr(state, f.name)
        if p != q:
            yield Finding(FindingKind.PROJECTION_MISMATCH, aid, f.name,
                          (("projection", json_value(p)), ("fold", json_value(q))))
