"""The legacy-backend contract, run against each backend the router can be given: the in-memory test
double (``assessment_store.migration.testing``) and the HTTP adapter of the Node sample legacy service.
What the double promises, the real thing does: a routing test passing on the double means something."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from assessment_store import AssessmentNotFound, InvalidTransition, Settings, State, WaitTimeout
from assessment_store.migration import (
    HttpLegacyBackend,
    LegacyBackend,
    reverse_topic_spec,
    start_legacy_http,
)
from assessment_store.migration.testing import InMemoryLegacyBackend
from assessment_store.streams import ensure_topics

pytestmark = pytest.mark.stack


@pytest.fixture(params=["in-memory", "http"])
async def backend(request: pytest.FixtureRequest, stack_settings: Settings, tmp_path: Path) -> AsyncIterator[LegacyBackend]:
    """Each legacy backend in turn: the in-memory double, then the Node sample service over HTTP."""
    if request.param == "in-memory":
        yield InMemoryLegacyBackend()
        return
    run = uuid.uuid4().hex[:8]
    await ensure_topics(stack_settings, [reverse_topic_spec(stack_settings)])
    legacy = await start_legacy_http(stack_settings, group=f"legacy-contract-{run}", emitter_id=f"legacy-contract-{run}",
                                     stderr_path=tmp_path / "legacy-http.stderr")
    try:
        async with HttpLegacyBackend(legacy.url) as http:
            yield http
    finally:
        await legacy.stop()


def _aid() -> str:
    return f"contract-{uuid.uuid4().hex[:10]}"


async def test_create_then_read(backend: LegacyBackend) -> None:
    """A created assessment reads back PENDING at version 1 with its request; unknown ids are not found."""
    aid = _aid()
    assert await backend.create_assessment({"q": [1, "a"]}, assessment_id=aid) == aid
    state = await backend.get_state(aid)
    assert (state.assessment_id, state.state, state.version, state.progress, state.request_data) == (
        aid, State.PENDING, 1, 0, {"q": [1, "a"]})
    assert await backend.find_state(f"{aid}-missing") is None
    with pytest.raises(AssessmentNotFound) as missing:
        await backend.get_state(f"{aid}-missing")
    assert missing.value.assessment_id == f"{aid}-missing"


async def test_a_second_create_of_one_id_is_an_invalid_transition(backend: LegacyBackend) -> None:
    """Creating an id that exists is refused as InvalidTransition(id, PENDING, create), and changes nothing."""
    aid = _aid()
    await backend.create_assessment({"first": True}, assessment_id=aid)
    with pytest.raises(InvalidTransition) as dup:
        await backend.create_assessment({"second": True}, assessment_id=aid)
    assert (dup.value.assessment_id, dup.value.state, dup.value.transition) == (aid, "PENDING", "create")
    assert (await backend.get_state(aid)).request_data == {"first": True}


async def test_a_lifecycle_counts_versions_and_keeps_what_each_step_set(backend: LegacyBackend) -> None:
    """start, progress and complete move to PROCESSING / 50 % / COMPLETED at versions 2, 3, 4; a wait returns at once."""
    aid = _aid()
    await backend.create_assessment({"n": 1}, assessment_id=aid)
    started = await backend.start_assessment(aid)
    assert (started.state, started.version) == (State.PROCESSING, 2)
    half = await backend.update_progress(aid, 50, "half")
    assert (half.state, half.version, half.progress, half.message) == (State.PROCESSING, 3, 50, "half")
    done = await backend.complete_assessment(aid, {"score": 7})
    assert (done.state, done.version, done.progress, done.result_data) == (State.COMPLETED, 4, 100, {"score": 7})
    waited = await backend.wait_for_completion(aid, 5.0)
    assert (waited.state, waited.version) == (State.COMPLETED, 4)


async def test_failure_and_cancellation(backend: LegacyBackend) -> None:
    """fail from PROCESSING keeps the error; cancel from PENDING ends CANCELLED."""
    failing, cancelled = _aid(), _aid()
    await backend.create_assessment({}, assessment_id=failing)
    await backend.start_assessment(failing)
    failed = await backend.fail_assessment(failing, "scorer down")
    assert (failed.state, failed.error_message) == (State.FAILED, "scorer down")
    await backend.create_assessment({}, assessment_id=cancelled)
    assert (await backend.cancel_assessment(cancelled)).state is State.CANCELLED


async def test_illegal_transitions_are_refused_with_the_state_they_met(backend: LegacyBackend) -> None:
    """complete from PENDING and start from COMPLETED are InvalidTransition naming the state and the transition."""
    aid = _aid()
    await backend.create_assessment({}, assessment_id=aid)
    with pytest.raises(InvalidTransition) as early:
        await backend.complete_assessment(aid, {"too": "early"})
    assert (early.value.state, early.value.transition) == ("PENDING", "complete")
    await backend.start_assessment(aid)
    await backend.complete_assessment(aid, {})
    with pytest.raises(InvalidTransition) as again:
        await backend.start_assessment(aid)
    assert (again.value.state, again.value.transition) == ("COMPLETED", "start")


async def test_a_wait_on_an_unfinished_assessment_ends_in_wait_timeout(backend: LegacyBackend) -> None:
    """wait_for_completion of a PENDING assessment raises WaitTimeout naming it."""
    aid = _aid()
    await backend.create_assessment({}, assessment_id=aid)
    with pytest.raises(WaitTimeout) as waited:
        await backend.wait_for_completion(aid, 0.2)
    assert waited.value.assessment_id == aid
