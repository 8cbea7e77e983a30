"""The bridge's pure parts: legacy message -> commands or a reasoned rejection, export lines, dead letters."""

from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from assessment_store.core import (
    Assessment,
    Cancel,
    Command,
    Complete,
    Create,
    Fail,
    Start,
    State,
    UpdateProgress,
    decide,
    evolve,
)
from assessment_store.bridge import (
    LEGACY_STATES,
    LegacyEvent,
    LegacyMessage,
    LegacyView,
    RejectKind,
    Rejection,
    TranslateLimits,
    Translation,
    convert_legacy_state,
    parse_export_line,
    parse_message,
    plan_commands,
    plan_import,
    translate,
)
from assessment_store.bridge._consumer import DLQ_PAYLOAD_CAP, dead_letter_record
from assessment_store.bridge._snapshot import ExportRecord, ImportPlan

AID = "legacy-a-1"
STATUS = {"created": "pending", "started": "processing", "progress": "processing", "completed": "completed",
          "failed": "failed", "cancelled": "cancelled"}


def msg(event: str = "created", *, seq: int = 1, emitter: str = "api-1", emitted_at: str = "2024-05-01T12:00:00.123Z",
        **data: Any) -> dict[str, Any]:
    """A legacy message as the Node tap writes it (same key order)."""
    body: dict[str, Any] = {"assessmentId": AID, "status": STATUS[event]}
    if event == "progress":
        body["progress"] = 40
    body.update(data)
    return {"event": f"assessment.{event}", "data": body, "emittedAt": emitted_at, "seq": seq, "emitter": emitter}


def raw(m: object) -> bytes:
    return json.dumps(m).encode()


def ok(m: dict[str, Any] | bytes, view: LegacyView | None = None, **limits: int) -> Translation:
    t = translate(m if isinstance(m, bytes) else raw(m), view if view is not None else LegacyView(),
                  TranslateLimits(**limits))
    assert isinstance(t, Translation), t
    return t


def rejected(m: dict[str, Any] | bytes | None, **limits: int) -> Rejection:
    r = translate(m if isinstance(m, bytes) or m is None else raw(m), LegacyView(), TranslateLimits(**limits))
    assert isinstance(r, Rejection), r
    return r


# --- statuses ---------------------------------------------------------------------------------

def test_statuses_map_like_convert_legacy_state() -> None:
    """The five legacy statuses map to the five states of the same name."""
    assert {k: v.value for k, v in LEGACY_STATES.items()} == {
        "pending": "PENDING", "processing": "PROCESSING", "completed": "COMPLETED", "failed": "FAILED",
        "cancelled": "CANCELLED"}
    assert all(convert_legacy_state(k) is v for k, v in LEGACY_STATES.items())


@pytest.mark.parametrize("status", ["archived", "COMPLETED", "Completed", "", "done"])
def test_unknown_status_is_none_not_failed(status: str) -> None:
    """An unknown status maps to nothing (never to FAILED)."""
    assert convert_legacy_state(status) is None


@pytest.mark.parametrize("status", ["archived", "COMPLETED", "", "error"])
def test_message_with_unknown_status_is_rejected_naming_it(status: str) -> None:
    """An unknown status is rejected with kind unknown-status, naming data.status and the value."""
    r = rejected(msg("completed", status=status))
    assert (r.kind, r.field) == (RejectKind.UNKNOWN_STATUS, "data.status")
    assert repr(status) in r.reason and "known: pending" in r.reason


# --- one command per event --------------------------------------------------------------------

def test_each_event_becomes_its_command_once_the_assessment_is_known() -> None:
    """created/started/progress/completed/failed/cancelled -> Create/Start/UpdateProgress/Complete/Fail/Cancel."""
    view = LegacyView()
    c = ok(msg("created", seq=1, request={"subject": "alice"}), view).commands
    assert len(c) == 1 and isinstance(c[0], Create) and c[0].request == {"subject": "alice"}
    c = ok(msg("started", seq=2), view).commands
    assert len(c) == 1 and isinstance(c[0], Start)
    c = ok(msg("progress", seq=3, progress=55, message="scoring"), view).commands
    assert len(c) == 1 and isinstance(c[0], UpdateProgress) and (c[0].progress, c[0].message) == (55, "scoring")
    c = ok(msg("completed", seq=4, result={"score": 7}, duration=1234), view).commands
    assert len(c) == 1 and isinstance(c[0], Complete) and (c[0].result, c[0].duration_ms) == ({"score": 7}, 1234)
    assert view.state_of(AID) is State.COMPLETED

    view2 = LegacyView()
    ok(msg("created", seq=1), view2)
    c = ok(msg("failed", seq=2, error="boom"), view2).commands
    assert len(c) == 1 and isinstance(c[0], Fail) and c[0].error == "boom" and not c[0].retryable
    view3 = LegacyView()
    ok(msg("created", seq=1), view3)
    c = ok(msg("cancelled", seq=2), view3).commands
    assert len(c) == 1 and isinstance(c[0], Cancel)


def test_commands_carry_legacy_ids_and_a_traceable_correlation() -> None:
    """Command ids start with 'legacy:' and the correlation id names emitter, seq and emittedAt."""
    c = ok(msg("created", seq=9, emitter="host-7")).commands[0]
    assert c.command_id.startswith("legacy:") and len(c.command_id) == len("legacy:") + 24
    assert c.correlation_id == "legacy:host-7#9@2024-05-01T12:00:00.123Z"
    assert c.assessment_id == AID


def test_missing_optional_fields_are_fine() -> None:
    """Only event, data.assessmentId, emittedAt, seq and emitter are required (any data field may be missing)."""
    m = {"event": "assessment.created", "data": {"assessmentId": AID}, "emittedAt": "2024-05-01T12:00:00Z",
         "seq": 1, "emitter": "e"}
    c = ok(m).commands[0]
    assert isinstance(c, Create) and c.request is None


def test_fractional_progress_and_duration_are_cut_down() -> None:
    """JavaScript numbers: 66.9 % becomes 66 (never more than reported), 12.7 ms becomes 12."""
    view = LegacyView()
    ok(msg("created"), view)
    ok(msg("started", seq=2), view)
    p = ok(msg("progress", seq=3, progress=66.9), view).commands[0]
    assert isinstance(p, UpdateProgress) and p.progress == 66
    c = ok(msg("completed", seq=4, duration=12.7), view).commands[0]
    assert isinstance(c, Complete) and c.duration_ms == 12


def test_failure_without_error_text_gets_a_placeholder() -> None:
    """The store requires a failure's error text; a legacy failure without one says so explicitly."""
    for data in ({}, {"error": None}, {"error": "  "}):
        view = LegacyView()
        ok(msg("created"), view)
        f = ok(msg("failed", seq=2, **data), view).commands[0]
        assert isinstance(f, Fail) and f.error == "failed in the legacy system (no error message given)"


# --- identity -------------------------------------------------------------------------------------

def test_command_id_is_pinned() -> None:
    """The id of a known message never changes (a change would make a re-read of the topic append everything again)."""
    assert ok(msg("created")).commands[0].command_id == "legacy:cd97319f7664210b8090880a"
    parts = ["api-1", 1, "2024-05-01T12:00:00.123Z", "assessment.created", AID]
    digest = hashlib.sha256(json.dumps(parts, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()
    assert digest[:24] == "cd97319f7664210b8090880a"


def test_redelivery_gives_the_same_command_ids() -> None:
    """The same emission delivered twice (even re-serialised with other key order) yields the same ids."""
    m = msg("completed", seq=42, result={"a": 1, "b": 2})
    again = json.dumps(dict(reversed(list(m.items())))).encode()
    ids_1 = [c.command_id for c in ok(m).commands]
    ids_2 = [c.command_id for c in ok(again).commands]
    assert ids_1 == ids_2


@pytest.mark.parametrize("change", [
    {"seq": 43}, {"emitter": "api-2"}, {"emitted_at": "2024-05-01T12:00:00.124Z"},
])
def test_different_emissions_get_different_ids(change: dict[str, Any]) -> None:
    """seq, emitter or emittedAt differing (e.g. a restarted tap reusing seq 42) means another emission."""
    base = ok(msg("progress", seq=42)).commands[-1].command_id
    other = ok(msg("progress", **{"seq": 42, **change})).commands[-1].command_id
    assert base != other


def test_restarted_tap_reusing_seq_is_a_new_emission() -> None:
    """A tap restarted under the same emitter id starts at seq 1 again; emittedAt tells the runs apart."""
    first = ok(msg("created", seq=1, emitted_at="2024-05-01T12:00:00.000Z")).commands[0].command_id
    second = ok(msg("created", seq=1, emitted_at="2024-05-01T13:00:00.000Z")).commands[0].command_id
    assert first != second


def test_the_event_and_assessment_are_part_of_the_identity() -> None:
    """Two events at the same (emitter, seq, emittedAt) - which the tap never writes - still get two ids."""
    a = ok(msg("created", seq=5)).commands[0].command_id
    b = ok(msg("created", seq=5, assessmentId="other")).commands[0].command_id
    assert a != b


# --- out-of-order input ------------------------------------------------------------------------------

SYNTHESIS: list[tuple[str, dict[str, Any], State | None, list[type[Command]]]] = [
    ("started", {}, None, [Create, Start]),
    ("started", {}, State.PENDING, [Start]),
    ("progress", {"status": "processing"}, None, [Create, Start, UpdateProgress]),
    ("progress", {"status": "pending"}, None, [Create, UpdateProgress]),
    ("progress", {"status": None}, None, [Create, UpdateProgress]),
    ("progress", {"status": "processing"}, State.PENDING, [Start, UpdateProgress]),
    ("progress", {"status": "pending"}, State.PENDING, [UpdateProgress]),
    ("progress", {}, State.PROCESSING, [UpdateProgress]),
    ("progress", {}, State.COMPLETED, [UpdateProgress]),
    ("completed", {}, None, [Create, Start, Complete]),
    ("completed", {}, State.PENDING, [Start, Complete]),
    ("completed", {}, State.PROCESSING, [Complete]),
    ("completed", {}, State.COMPLETED, [Complete]),
    ("failed", {}, None, [Create, Start, Fail]),
    ("failed", {}, State.PENDING, [Fail]),
    ("failed", {}, State.CANCELLED, [Fail]),
    ("cancelled", {}, None, [Create, Cancel]),
    ("cancelled", {}, State.PROCESSING, [Cancel]),
    ("created", {}, None, [Create]),
    ("created", {}, State.COMPLETED, [Create]),
]


@pytest.mark.parametrize(("event", "data", "known", "expected"), SYNTHESIS,
                         ids=[f"{e}-{d.get('status', '')}-{k.value if k else 'unknown'}" for e, d, k, _ in SYNTHESIS])
def test_synthesis_rule(event: str, data: dict[str, Any], known: State | None, expected: list[type[Command]]) -> None:
    """The documented rule: only the missing steps before the message's own command, nothing after a later state."""
    parsed = parse_message(raw(msg(event, **data)))
    assert isinstance(parsed, LegacyMessage)
    commands = plan_commands(parsed, known)
    assert [type(c) for c in commands] == expected
    own = commands[-1].command_id
    assert all(c.command_id in (f"{own}:create", f"{own}:start") for c in commands[:-1])


def test_synthesised_create_carries_the_request() -> None:
    """An orphan completion that carries data.request creates the assessment with that request."""
    t = ok(msg("completed", request={"subject": "x"}, result={"ok": True}))
    create = t.commands[0]
    assert isinstance(create, Create) and create.request == {"subject": "x"} and t.synthesised == 2


def test_synthesised_path_is_accepted_by_the_state_machine() -> None:
    """For every orphan kind the synthesised commands plus the message's own are all legal in order."""
    for event in ("started", "progress", "completed", "failed", "cancelled"):
        a: Assessment | None = None
        now = datetime(2026, 1, 1, tzinfo=UTC)
        for i, c in enumerate(ok(msg(event)).commands):
            a = evolve(a, decide(a, c, now + timedelta(seconds=i)))
        assert a is not None and a.version == len(ok(msg(event)).commands)


def test_redelivered_create_after_start_does_not_move_the_view_back() -> None:
    """created, started, created (re-delivered): the view stays PROCESSING and the re-sent Create keeps its id."""
    view = LegacyView()
    first = ok(msg("created", seq=1), view).commands[0].command_id
    ok(msg("started", seq=2), view)
    again = ok(msg("created", seq=1), view).commands
    assert [c.command_id for c in again] == [first]
    assert view.state_of(AID) is State.PROCESSING


def test_view_is_bounded_and_evicts_least_recently_used() -> None:
    """The view keeps at most its capacity; an evicted assessment reads as unknown."""
    view = LegacyView(capacity=2)
    for aid in ("a", "b"):
        view.apply((Create(assessment_id=aid, request=None),))
    assert view.state_of("a") is State.PENDING  # a is now the most recent
    view.apply((Create(assessment_id="c", request=None),))
    assert len(view) == 2 and view.state_of("b") is None and view.state_of("a") is State.PENDING


def test_view_seed_never_overrides_what_the_bridge_sent() -> None:
    """A projection read (possibly stale) does not replace the state the bridge itself moved to."""
    view = LegacyView()
    view.apply((Create(assessment_id="a", request=None), Start(assessment_id="a")))
    view.seed("a", State.PENDING)
    view.seed("b", State.COMPLETED)
    assert (view.state_of("a"), view.state_of("b")) == (State.PROCESSING, State.COMPLETED)


def test_illegal_step_leaves_the_view_unchanged() -> None:
    """Progress after completion is sent (for the store to reject) and the view stays COMPLETED."""
    view = LegacyView()
    view.seed(AID, State.COMPLETED)
    t = ok(msg("progress", seq=7), view)
    assert [type(c) for c in t.commands] == [UpdateProgress] and view.state_of(AID) is State.COMPLETED


# --- rejections, one per kind of bad input ---------------------------------------------------------

@pytest.mark.parametrize(("payload", "kind", "field", "words"), [
    (None, RejectKind.EMPTY, None, "empty"),
    (b"", RejectKind.EMPTY, None, "empty"),
    (b"  \n", RejectKind.EMPTY, None, "empty"),
    (b'{"event": "assessment.created", "data": {"assessmentId": "\xff\xfe"}}', RejectKind.NOT_UTF8, None,
     "byte 0xff at position"),
    (b"{not json", RejectKind.INVALID_JSON, None, "not JSON"),
    (b'{"event": "assessment.created"', RejectKind.INVALID_JSON, None, "not JSON"),
    (b'{"event": NaN}', RejectKind.INVALID_JSON, None, "NaN is not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, RejectKind.INVALID_JSON, None, "nested too deeply"),
    (b'{"n": ' + b"9" * 5000 + b"}", RejectKind.INVALID_JSON, None, "not JSON"),
    (b'["assessment.created"]', RejectKind.NOT_AN_OBJECT, None, "array"),
    (b'"text"', RejectKind.NOT_AN_OBJECT, None, "string"),
])
def test_undecodable_payloads(payload: bytes | None, kind: RejectKind, field: str | None, words: str) -> None:
    """Empty, non-UTF-8, invalid JSON, NaN, absurd nesting or huge numbers, non-objects: rejected, never raised."""
    r = rejected(payload)
    assert (r.kind, r.field) == (kind, field) and words in r.reason, r


def test_huge_payload_is_rejected_before_decoding() -> None:
    """A record above the configured limit is too-large, with both sizes in the reason."""
    big = raw(msg("created", request={"blob": "x" * 5000}))
    r = rejected(big, max_message_bytes=4096)
    assert r.kind is RejectKind.TOO_LARGE and f"{len(big)} bytes" in r.reason and "4096" in r.reason


def test_request_above_the_store_limit_is_rejected_naming_it() -> None:
    """A request the store would refuse as too big is rejected by the bridge, naming data.request."""
    r = rejected(msg("created", request={"blob": "x" * 3000}), max_json_bytes=2048)
    assert (r.kind, r.field) == (RejectKind.INVALID_VALUE, "data.request") and "above the limit of 2048" in r.reason


def test_lone_surrogate_is_rejected_naming_the_field() -> None:
    """A lone UTF-16 surrogate escape cannot be stored as UTF-8: rejected, naming the field."""
    r = rejected(b'{"event": "assessment.progress", "data": {"assessmentId": "a", "progress": 1, '
                 b'"message": "bad \\ud800 text"}, "emittedAt": "2024-05-01T12:00:00Z", "seq": 1, "emitter": "e"}')
    assert (r.kind, r.field) == (RejectKind.NOT_UTF8, "data.message")
    ok(b'{"event": "assessment.progress", "data": {"assessmentId": "a", "progress": 1, '
       b'"message": "pair \\ud83d\\ude00 ok"}, "emittedAt": "2024-05-01T12:00:00Z", "seq": 1, "emitter": "e"}')


def _without(m: dict[str, Any], key: str) -> dict[str, Any]:
    if key.startswith("data."):
        return {**m, "data": {k: v for k, v in m["data"].items() if k != key[5:]}}
    return {k: v for k, v in m.items() if k != key}


@pytest.mark.parametrize("field", ["event", "data", "emittedAt", "seq", "emitter", "data.assessmentId"])
def test_missing_required_field(field: str) -> None:
    """Each required field, absent: missing-field naming exactly that field."""
    r = rejected(_without(msg("created"), field))
    assert (r.kind, r.field) == (RejectKind.MISSING_FIELD, field) and "is required" in r.reason


def test_null_required_field_and_progress_without_value() -> None:
    """null for a required field, and a progress event without data.progress, are missing-field."""
    r = rejected({**msg("created"), "data": None})
    assert (r.kind, r.field, r.reason) == (RejectKind.MISSING_FIELD, "data", "data: is null")
    r = rejected(_without(msg("progress"), "data.progress"))
    assert (r.kind, r.field) == (RejectKind.MISSING_FIELD, "data.progress") and "assessment.progress" in r.reason


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("event", 5, "must be a string, got number"),
    ("data", [1], "must be an object, got array"),
    ("seq", "1", "must be an integer, got string"),
    ("seq", True, "must be an integer, got boolean"),
    ("seq", 1.5, "must be an integer, got number"),
    ("emitter", {"id": 1}, "must be a string, got object"),
    ("emittedAt", 1714564800000, "must be a string, got number"),
    ("data.assessmentId", 12345, "must be a string, got number"),
    ("data.status", 1, "must be a string, got number"),
    ("data.progress", "50", "must be a number, got string"),
    ("data.progress", True, "must be a number, got boolean"),
    ("data.message", ["m"], "must be a string, got array"),
    ("data.error", {"message": "boom"}, "must be a string, got object"),
    ("data.duration", "12ms", "must be a number, got string"),
    ("data.timestamp", 17, "must be a string, got number"),
])
def test_wrongly_typed_fields(path: str, value: object, expected: str) -> None:
    """Each field with a wrong JSON type: wrong-type, naming the field and both types."""
    m = msg("progress")
    if path.startswith("data."):
        m["data"][path[5:]] = value
    else:
        m[path] = value
    r = rejected(m)
    assert (r.kind, r.field) == (RejectKind.WRONG_TYPE, path) and r.reason == f"{path}: {expected}", r


@pytest.mark.parametrize(("path", "value", "words"), [
    ("data.assessmentId", "", "non-empty"),
    ("data.assessmentId", "a|b", "'|'"),
    ("data.assessmentId", "x" * 201, "longer than 200"),
    ("data.progress", 101, "between 0 and 100, got 101"),
    ("data.progress", -1, "between 0 and 100"),
    ("data.duration", -5, "at least 0"),
    ("seq", -1, "non-negative"),
    ("emitter", "", "non-empty"),
    ("emittedAt", "yesterday", "not an ISO-8601 timestamp"),
    ("data.timestamp", "31/12/2024", "not an ISO-8601 timestamp"),
    ("data.message", "m" * 10_001, "longer than 10000"),
])
def test_invalid_values(path: str, value: object, words: str) -> None:
    """Right type, impossible value: invalid-value naming the field."""
    m = msg("progress")
    if path.startswith("data."):
        m["data"][path[5:]] = value
    else:
        m[path] = value
    r = rejected(m)
    assert (r.kind, r.field) == (RejectKind.INVALID_VALUE, path) and words in r.reason, r


def test_unknown_event_is_rejected_listing_the_known_ones() -> None:
    """An event name outside the six is unknown-event, naming it and the known ones."""
    r = rejected({**msg("created"), "event": "assessment.archived"})
    assert (r.kind, r.field) == (RejectKind.UNKNOWN_EVENT, "event")
    assert "'assessment.archived'" in r.reason and "assessment.cancelled" in r.reason


@pytest.mark.parametrize(("event", "status"), [
    ("completed", "failed"), ("created", "processing"), ("progress", "completed"), ("started", "pending"),
])
def test_status_contradicting_the_event_is_rejected(event: str, status: str) -> None:
    """A known status that contradicts the event (e.g. completed with 'failed') is status-mismatch."""
    r = rejected(msg(event, status=status))
    assert (r.kind, r.field) == (RejectKind.STATUS_MISMATCH, "data.status") and f"'{status}'" in r.reason


def test_rejections_never_touch_the_view() -> None:
    """A rejected message leaves the view as it was."""
    view = LegacyView()
    assert isinstance(translate(raw(msg("created", status="archived")), view), Rejection)
    assert len(view) == 0


def test_every_event_name_is_handled() -> None:
    """Each of the six legacy events translates (no event is forgotten in the planner)."""
    for event in LegacyEvent:
        name = event.value.split(".")[1]
        assert ok(msg(name)).commands


def test_fuzzed_input_never_raises() -> None:
    """5,000 random mutations of valid messages (bytes flipped, cut, fields replaced) never raise."""
    rng = random.Random(1234)
    samples = [raw(msg(e, request={"k": [1, 2, {"z": None}]}, result="r", message="m"))
               for e in ("created", "started", "progress", "completed", "failed", "cancelled")]
    values: list[object] = [None, True, 0, -1, 1.5, 1e308, "", "x" * 300, [], {}, [None], {"a": {}}]
    view = LegacyView(capacity=50)
    for _ in range(5000):
        base = bytearray(rng.choice(samples))
        mode = rng.randrange(3)
        if mode == 0:
            for _ in range(rng.randrange(1, 4)):
                base[rng.randrange(len(base))] = rng.randrange(256)
            payload = bytes(base)
        elif mode == 1:
            payload = bytes(base[: rng.randrange(len(base))])
        else:
            m = json.loads(base)
            target = m if rng.random() < 0.4 else m["data"]
            target[rng.choice(list(target))] = rng.choice(values)
            payload = raw(m)
        result = translate(payload, view)
        assert isinstance(result, (Translation, Rejection))


# --- export lines --------------------------------------------------------------------------------------

def line(**fields: Any) -> bytes:
    base: dict[str, Any] = {"assessmentId": "exp-1", "status": "completed", "progress": 100, "message": None,
                            "request": {"q": 1}, "result": {"score": 3}, "error": None,
                            "timestamp": "2024-05-01T12:00:00.000Z", "updatedAt": "2024-05-01T12:00:05.000Z",
                            "duration": 5000}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def record(**fields: Any) -> ExportRecord:
    r = parse_export_line(line(**fields), max_bytes=100_000)
    assert isinstance(r, ExportRecord), r
    return r


def plan(r: ExportRecord, current: Assessment | None = None) -> ImportPlan:
    p = plan_import(r, current, max_json_bytes=100_000)
    assert isinstance(p, ImportPlan), p
    return p


def fold(commands: tuple[Command, ...], start: Assessment | None = None) -> Assessment | None:
    a = start
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for i, c in enumerate(commands):
        a = evolve(a, decide(a, c, now + timedelta(seconds=i)))
    return a


@pytest.mark.parametrize(("status", "expected"), [
    ("pending", [Create, UpdateProgress]),
    ("processing", [Create, Start, UpdateProgress]),
    ("completed", [Create, Start, Complete]),
    ("failed", [Create, Start, UpdateProgress, Fail]),
    ("cancelled", [Create, UpdateProgress, Cancel]),
])
def test_export_line_plans_the_path_to_its_state(status: str, expected: list[type[Command]]) -> None:
    """Each exported status gets the documented path, which the state machine accepts and ends in that state."""
    progress = 100 if status == "completed" else 30
    r = record(status=status, progress=progress, message="m" if status != "completed" else None, error="boom")
    p = plan(r)
    assert [type(c) for c in p.commands] == expected
    a = fold(p.commands)
    assert a is not None and a.state is LEGACY_STATES[status]
    assert a.request_data == {"q": 1}
    if status == "completed":
        assert (a.result_data, a.duration) == ({"score": 3}, 5000)
    if status == "failed":
        assert a.error_message == "boom"


def test_import_command_ids_are_pinned() -> None:
    """Import ids depend on the assessment and the step only, and never change (a re-import must send the same ids)."""
    assert [c.command_id for c in plan(record(status="completed")).commands] == [
        "legacy-import:cfc078f8a489d58af51429f0", "legacy-import:9c13191088def3afb498ee30",
        "legacy-import:6fb5c65b5b6e6cfb1be97895"]
    assert [c.command_id for c in plan(record(status="completed", request={"other": 1})).commands][0] == (
        "legacy-import:cfc078f8a489d58af51429f0")


def test_export_plan_only_sends_missing_steps_and_nothing_when_up_to_date() -> None:
    """Against the store's current state only the missing steps are planned; the same ids as a full plan."""
    r = record(status="completed")
    full = plan(r).commands
    pending = fold(full[:1])
    rest = plan(r, pending).commands
    assert [c.command_id for c in rest] == [c.command_id for c in full[1:]]
    done = fold(full)
    assert plan(r, done).commands == () and not plan(r, done).store_ahead


def test_export_behind_the_store_is_store_ahead() -> None:
    """An export older than the store's state (processing vs completed) plans nothing and says so."""
    done = fold(plan(record(status="completed")).commands)
    p = plan(record(status="processing", progress=20), done)
    assert p.commands == () and p.store_ahead


def test_export_contradicting_a_final_state_is_a_conflict() -> None:
    """The store has COMPLETED, the export says failed: a conflict rejection, nothing planned."""
    done = fold(plan(record(status="completed")).commands)
    r = plan_import(record(status="failed", error="x"), done, max_json_bytes=100_000)
    assert isinstance(r, Rejection) and r.kind is RejectKind.CONFLICT and "COMPLETED" in r.reason


@pytest.mark.parametrize(("fields", "kind", "field"), [
    ({"status": "archived"}, RejectKind.UNKNOWN_STATUS, "status"),
    ({"status": ...}, RejectKind.MISSING_FIELD, "status"),
    ({"assessmentId": ...}, RejectKind.MISSING_FIELD, "assessmentId"),
    ({"progress": "10"}, RejectKind.WRONG_TYPE, "progress"),
    ({"duration": -3}, RejectKind.INVALID_VALUE, "duration"),
    ({"updatedAt": "soon"}, RejectKind.INVALID_VALUE, "updatedAt"),
])
def test_bad_export_lines_are_rejected_naming_the_field(fields: dict[str, Any], kind: RejectKind, field: str) -> None:
    """Export lines are checked like messages; the rejection names the top-level field."""
    r = parse_export_line(line(**fields), max_bytes=100_000)
    assert isinstance(r, Rejection) and (r.kind, r.field) == (kind, field), r


# --- dead letters -------------------------------------------------------------------------------------

def _record(value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("legacy.assessment-events", 3, 17, 1714564800000, 0, b"k", value, None, 1,
                          len(value or b""), [("origin", b"tap")])


def test_dead_letter_wraps_reason_source_and_payload() -> None:
    """A dead letter keeps the original headers, adds reason/kind/source headers and a JSON wrapper with the payload."""
    value, key, headers = dead_letter_record(_record(b'{"x": 1}'), Rejection(RejectKind.INVALID_VALUE, "f", "f: bad"))
    assert key == b"k"
    h = dict(headers)
    assert h["origin"] == b"tap" and h["dlq-reason"] == b"f: bad" and h["dlq-kind"] == b"invalid-value"
    assert h["dlq-source"] == b"legacy.assessment-events/3/17"
    w = json.loads(value)
    assert (w["payload"], w["kind"], w["field"], w["reason"], w["truncated"]) == ('{"x": 1}', "invalid-value", "f",
                                                                                  "f: bad", False)
    assert w["source"] == {"topic": "legacy.assessment-events", "partition": 3, "offset": 17,
                           "timestamp": 1714564800000}


def test_dead_letter_of_binary_and_huge_payloads() -> None:
    """Non-UTF-8 payloads travel as base64; huge ones as a prefix with the full size and SHA-256."""
    w = json.loads(dead_letter_record(_record(b"\xff\x00"), Rejection(RejectKind.NOT_UTF8, None, "x"))[0])
    assert w["payloadBase64"] == "/wA=" and "payload" not in w
    big = b"y" * (DLQ_PAYLOAD_CAP + 10)
    w = json.loads(dead_letter_record(_record(big), Rejection(RejectKind.TOO_LARGE, None, "x"))[0])
    assert w["truncated"] and w["size"] == len(big) and DLQ_PAYLOAD_CAP - 64 <= len(w["payload"]) <= DLQ_PAYLOAD_CAP


def test_dead_letter_stays_bounded_whatever_the_input() -> None:
    """Control characters (6x on escaping), a 900 KB key and 900 KB of headers still give a letter under 600 KB."""
    rec = ConsumerRecord("legacy.assessment-events", 0, 1, 0, 0, b"k" * 900_000, b"\x01" * 900_000, None, 1, 1,
                         [("h", b"v" * 900_000)])
    value, key, headers = dead_letter_record(rec, Rejection(RejectKind.TOO_LARGE, None, "x"))
    assert len(value) + len(key or b"") + sum(len(k) + len(v) for k, v in headers) < 600_000
    w = json.loads(value)
    assert w["truncated"] and w["keySize"] == 900_000 and w["headersDropped"] and key is not None
    assert key.startswith(b"sha256:")


# --- what the store cannot hold never leaves the bridge (issue 9, defects 1 and 3) ------------------------------

@pytest.mark.parametrize(("event", "data", "field", "words"), [
    ("completed", {"duration": 9223372036854775808}, "data.duration", "between 0 and 9223372036854775807"),
    ("failed", {"duration": 1e300}, "data.duration", "between 0 and"),
    ("progress", {"message": "a\x00b"}, "data.message", "NUL"),
    ("failed", {"error": "\x00"}, "data.error", "NUL"),
    ("created", {"request": {"a": ["ok", "x\x00"]}}, "data.request.a[1]", "NUL"),
    ("completed", {"result": {"k": 2**64}}, "data.result.k", "64-bit"),
    ("completed", {"request": {"nul\x00key": 1}}, "data.request", "NUL"),
])
def test_values_the_store_cannot_hold_are_rejected_naming_the_legacy_field(
    event: str, data: dict[str, Any], field: str, words: str
) -> None:
    """A duration beyond Avro's long, NUL in message/error/request, a JSON integer beyond 64 bits: invalid-value,
    naming the legacy field path (the one-message-stops-the-bridge input of issue 9 among them)."""
    r = rejected(msg(event, **data))
    assert (r.kind, r.field) == (RejectKind.INVALID_VALUE, field) and words in r.reason, r


def test_a_request_nested_too_deeply_is_rejected() -> None:
    """A request nested 100 levels is invalid-value on data.request (the store keeps at most 64)."""
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    r = rejected(msg("created", request=deep))
    assert r.kind is RejectKind.INVALID_VALUE and r.field is not None and r.field.startswith("data.request")
    assert "deeper than 64" in r.reason
