"""The state machine as pure functions: no services needed."""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from assessment_store import AssessmentNotFound, InvalidTransition, State, ValidationError, VersionConflict
from assessment_store.core import (
    Outcome,
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
    Fail,
    Failed,
    ProgressUpdated,
    Retried,
    Retry,
    Start,
    Started,
    UpdateProgress,
    decide,
    evolve,
    new_id,
    slot_constructor,
)

from .state_table import LEGAL, TRANSITION_NAMES

T0 = datetime(2026, 1, 1, tzinfo=UTC)
AID = "a-1"


def _in_state(state: State) -> Assessment:
    """Fold the shortest legal path from creation to ``state``."""
    paths: dict[State, list[Command]] = {
        State.PENDING: [],
        State.PROCESSING: [Start(assessment_id=AID)],
        State.COMPLETED: [Start(assessment_id=AID), Complete(assessment_id=AID, result={"ok": True})],
        State.FAILED: [Start(assessment_id=AID), Fail(assessment_id=AID, error="boom")],
        State.CANCELLED: [Cancel(assessment_id=AID, reason="x")],
    }
    a = evolve(None, decide(None, Create(assessment_id=AID, request={"q": 1}), T0))
    for i, cmd in enumerate(paths[state], start=1):
        a = evolve(a, decide(a, cmd, T0 + timedelta(seconds=i)))
    assert a.state is state
    return a


TRANSITIONS: dict[str, Command] = {
    "start": Start(assessment_id=AID),
    "update_progress": UpdateProgress(assessment_id=AID, progress=40, message="m"),
    "complete": Complete(assessment_id=AID, result=1),
    "fail": Fail(assessment_id=AID, error="e"),
    "cancel": Cancel(assessment_id=AID),
    "retry": Retry(assessment_id=AID),
}


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("name", TRANSITION_NAMES)
def test_every_state_transition_pair(state: State, name: str) -> None:
    """Legal pairs yield the next version and target state; illegal ones raise InvalidTransition naming all three."""
    current = _in_state(state)
    cmd = TRANSITIONS[name]
    if (state, name) in LEGAL:
        ev = decide(current, cmd, T0 + timedelta(minutes=1))
        assert ev.version == current.version + 1
        assert evolve(current, ev).state is LEGAL[(state, name)]
    else:
        with pytest.raises(InvalidTransition) as info:
            decide(current, cmd, T0 + timedelta(minutes=1))
        assert (info.value.assessment_id, info.value.state, info.value.transition) == (AID, state.value, name)
        assert AID in str(info.value) and state.value in str(info.value) and name in str(info.value)


def test_create_twice_is_invalid() -> None:
    """Creating an id that exists is refused."""
    with pytest.raises(InvalidTransition):
        decide(_in_state(State.PENDING), Create(assessment_id=AID, request={}), T0)


def test_command_on_unknown_id_is_not_found() -> None:
    """Any non-create command on a missing assessment raises AssessmentNotFound with the id."""
    with pytest.raises(AssessmentNotFound) as info:
        decide(None, Start(assessment_id="nope"), T0)
    assert info.value.assessment_id == "nope"


@pytest.mark.parametrize("progress", [-1, 101, True, 50.5])
def test_progress_out_of_range_names_the_field(progress: object) -> None:
    """Progress outside 0..100 or not an int is a ValidationError on 'progress'."""
    with pytest.raises(ValidationError) as info:
        decide(_in_state(State.PROCESSING), UpdateProgress(assessment_id=AID, progress=progress), T0)  # type: ignore[arg-type]
    assert info.value.field == "progress"


def test_expected_version_mismatch_is_a_conflict() -> None:
    """A stale expected_version raises VersionConflict carrying expected and actual."""
    with pytest.raises(VersionConflict) as info:
        decide(_in_state(State.PROCESSING), Start(assessment_id=AID, expected_version=1), T0)
    assert (info.value.expected, info.value.actual) == (1, 2)


def test_oversized_request_is_refused() -> None:
    """A request document above the byte limit is a ValidationError on 'request'."""
    with pytest.raises(ValidationError) as info:
        decide(None, Create(assessment_id=AID, request={"x": "y" * 2000}), T0, max_json_bytes=1024)
    assert info.value.field == "request"


def test_retry_increments_count_and_respects_limit() -> None:
    """Retry moves FAILED to PENDING with retry_count + 1, and stops at max_retries."""
    a = evolve(None, decide(None, Create(assessment_id=AID, request={}, max_retries=1), T0))
    a = evolve(a, decide(a, Fail(assessment_id=AID, error="e", retryable=True), T0))
    a = evolve(a, decide(a, Retry(assessment_id=AID), T0))
    assert (a.state, a.retry_count, a.error_message) == (State.PENDING, 1, None)
    a = evolve(a, decide(a, Fail(assessment_id=AID, error="e"), T0))
    with pytest.raises(InvalidTransition, match="limit of 1"):
        decide(a, Retry(assessment_id=AID), T0)


def test_complete_computes_duration_from_start() -> None:
    """Without an explicit duration, completion records the milliseconds since start."""
    a = _in_state(State.PROCESSING)  # started at T0 + 1 s
    ev = decide(a, Complete(assessment_id=AID, result=None), T0 + timedelta(seconds=3.5))
    assert evolve(a, ev).duration == 2500


@pytest.mark.parametrize("bad", ["", " ", "a|b", "x" * 201, "tab\there"])
def test_bad_ids_are_refused(bad: str) -> None:
    """Empty, overlong, non-printable or '|'-containing ids are refused on 'assessment_id'."""
    with pytest.raises(ValidationError) as info:
        decide(None, Create(assessment_id=bad, request={}), T0)
    assert info.value.field == "assessment_id"


def test_an_origin_time_becomes_occurred_at_and_the_duration_clock() -> None:
    """decide(occurred_at=legacy time): the event's occurred_at and the computed duration follow it; recorded_at is now."""
    from assessment_store.core import Complete, Create, Start

    legacy = T0 - timedelta(days=30)
    created = decide(None, Create(assessment_id="a-1", request={}), T0, occurred_at=legacy)
    assert (created.occurred_at, created.recorded_at) == (legacy, T0)
    state = evolve(None, created)
    started = decide(state, Start(assessment_id="a-1"), T0, occurred_at=legacy + timedelta(seconds=1))
    state = evolve(state, started)
    assert state.created_at == legacy and state.started_at == legacy + timedelta(seconds=1)
    done = decide(state, Complete(assessment_id="a-1", result={}), T0, occurred_at=legacy + timedelta(seconds=3))
    assert done.payload.duration_ms == 2000  # type: ignore[union-attr]
    # A clock ahead of the store's is not believed: no event comes from the future.
    ahead = decide(state, Complete(assessment_id="a-1", result={}), T0, occurred_at=T0 + timedelta(hours=1))
    assert ahead.occurred_at == T0


def test_new_id_is_a_canonical_time_ordered_uuid7() -> None:
    """new_id gives distinct version-7 UUIDs of the RFC 4122 variant, canonical text, stamped with the time."""
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after
    # Every value of the variant's two free bits occurs (the 17th digit is one of 8, 9, a, b).
    assert {text[19] for text in ids} == set("89ab")
    # Made later, sorted later (the millisecond leads): what keeps b-tree insertions on the right.
    later = new_id()
    assert later[:13] >= ids[-1][:13] and later > ids[0]


def test_new_id_in_a_forked_child_differs_from_its_parent() -> None:
    """A forked child draws fresh ids: it never hands out the ones its parent holds in its batch."""
    new_id()  # the parent holds a partly used batch
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write_end, " ".join(new_id() for _ in range(300)).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as f:
        child = set(f.read().decode().split())
    parent = {new_id() for _ in range(300)}
    assert len(child) == 300 and not child & parent


def test_slot_constructor_builds_what_the_class_builds() -> None:
    """slot_constructor(Event) with every field in order equals Event(...) with the same values."""
    at = datetime(2026, 1, 2, tzinfo=UTC)
    values = ("a-1", 2, Started("w"), at, at, EventSource.LEGACY_BRIDGE, "e-1", "c-1", None)
    assert slot_constructor(Event)(*values) == Event(*values)


def test_slot_constructor_builds_the_outcome_the_class_builds() -> None:
    """slot_constructor(Outcome) with every field in order equals Outcome(...) with the same keywords."""
    at = datetime(2026, 1, 2, tzinfo=UTC)
    kw = dict(command_id="c-1", assessment_id="a-1", accepted=True, processed_at=at, command_offset=7, version=3,
              event_id="e-1", error_type=None, error_message=None, error_details=None, duplicate=False)
    assert [f.name for f in dataclasses.fields(Outcome)] == list(kw)
    assert slot_constructor(Outcome)(*kw.values()) == Outcome(**kw)  # type: ignore[arg-type]


def test_slot_constructor_instances_are_the_frozen_class() -> None:
    """An instance slot_constructor builds is of the class itself, equal, hashable and still frozen."""
    at = datetime(2026, 1, 2, tzinfo=UTC)
    values = ("a-1", 2, Started("w"), at, at, EventSource.STORE, "e-1", None, "c-1")
    built = slot_constructor(Event)(*values)
    assert type(built) is Event and hash(built) == hash(Event(*values))
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.version = 3  # type: ignore[misc]


def test_slot_constructor_builds_a_class_with_a_slotted_base() -> None:
    """slot_constructor(UpdateProgress), whose base holds four fields, builds what its constructor builds."""
    built = slot_constructor(UpdateProgress)("a-1", "c-1", 4, "corr", 50, "half")
    assert built == UpdateProgress(assessment_id="a-1", command_id="c-1", expected_version=4, correlation_id="corr",
                                   progress=50, message="half")
    assert type(built) is UpdateProgress


@pytest.mark.parametrize(("payload", "changes"), [
    (Started("w"), {"state": State.PROCESSING, "started_at": T0 + timedelta(seconds=9)}),
    (ProgressUpdated(40, "m"), {"progress": 40, "message": "m"}),
    (Completed({"r": 1}, 12), {"state": State.COMPLETED, "progress": 100, "result_data": {"r": 1}, "duration": 12,
                               "finished_at": T0 + timedelta(seconds=9)}),
    (Failed("boom", True, 13), {"state": State.FAILED, "error_message": "boom", "retryable": True, "duration": 13,
                                "finished_at": T0 + timedelta(seconds=9)}),
    (Cancelled("no"), {"state": State.CANCELLED, "cancel_reason": "no", "finished_at": T0 + timedelta(seconds=9)}),
    (Retried(2), {"state": State.PENDING, "retry_count": 2, "progress": 0, "error_message": None, "retryable": None,
                  "started_at": None, "finished_at": None, "duration": None}),
])
def test_evolve_changes_exactly_the_fields_of_its_event(payload: object, changes: dict[str, object]) -> None:
    """evolve copies every field but the version, updated_at, last event id and its payload's ones."""
    at = T0 + timedelta(seconds=9)
    current = Assessment(
        assessment_id=AID, state=State.FAILED, version=6, progress=30, message="before", created_at=T0, updated_at=T0,
        request_data={"q": 1}, result_data={"old": True}, error_message="old", retry_count=1, duration=5,
        started_at=T0, finished_at=T0, retryable=False, cancel_reason="old", processing_timeout_ms=1000, max_retries=3,
        last_event_id="e-6",
    )
    event = Event(AID, 7, payload, at, at, event_id="e-7")  # type: ignore[arg-type]
    folded = evolve(current, event)
    assert type(folded) is Assessment
    assert folded == current.replace(version=7, updated_at=at, last_event_id="e-7", **changes)


def test_replace_refuses_a_name_that_is_not_a_field() -> None:
    """Assessment.replace with an unknown name raises AttributeError naming it."""
    at = datetime(2026, 1, 2, tzinfo=UTC)
    a = evolve(None, Event("a-1", 1, Created({"x": 1}), at, at))
    with pytest.raises(AttributeError, match="colour"):
        a.replace(colour="blue")
    assert a.replace(progress=5).progress == 5 and a.progress == 0
