"""One assessment's lifecycle end to end: Kafka append, projector fold, PostgreSQL read."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from assessment_store import (
    AssessmentNotFound,
    AssessmentStore,
    InvalidTransition,
    Settings,
    State,
    SyncAssessmentStore,
    WaitTimeout,
)
from assessment_store.testing import topic_end_offsets

pytestmark = pytest.mark.stack


async def test_lifecycle_shows_every_field(store: AssessmentStore) -> None:
    """create, start, progress, complete: get_state shows id, state, version, progress, message,
    request, result, timestamps and duration."""
    before = datetime.now(UTC)
    request = {"subject": "alice", "checks": ["kyc", "aml"], "nested": {"ü": 1}}
    aid = await store.create_assessment(request)
    created = await store.get_state(aid)
    assert (created.state, created.version, created.progress, created.request_data) == (State.PENDING, 1, 0, request)
    await store.start_assessment(aid)
    await store.update_progress(aid, 60, "scoring")
    mid = await store.get_state(aid)
    assert (mid.state, mid.version, mid.progress, mid.message) == (State.PROCESSING, 3, 60, "scoring")
    await store.complete_assessment(aid, {"score": 712})
    a = await store.get_state(aid)
    after = datetime.now(UTC)
    assert a.assessment_id == aid
    assert a.state is State.COMPLETED
    assert a.version == 4
    assert a.progress == 100
    assert a.message == "scoring"
    assert a.request_data == request
    assert a.result_data == {"score": 712}
    assert a.error_message is None and a.retry_count == 0
    assert before <= a.created_at <= a.started_at <= a.finished_at <= after  # type: ignore[operator]
    assert a.updated_at == a.finished_at
    assert a.duration is not None
    assert a.duration == int((a.finished_at - a.started_at).total_seconds() * 1000)  # type: ignore[operator]
    history = await store.get_history(aid)
    assert [h["type"] for h in history] == [
        "AssessmentCreated", "AssessmentStarted", "ProgressUpdated", "AssessmentCompleted"
    ]
    assert [h["version"] for h in history] == [1, 2, 3, 4]
    assert {h["kafka_topic"] for h in history} == {store.settings.events_topic}
    assert len({h["kafka_partition"] for h in history}) == 1  # keyed by id: one partition


async def test_wait_returns_when_completion_comes_later(store: AssessmentStore) -> None:
    """wait_for_completion started before the completion returns once it happens."""
    aid = await store.create_assessment({"k": "later"})
    await store.start_assessment(aid)
    waiter = asyncio.create_task(store.wait_for_completion(aid, timeout=20))
    await asyncio.sleep(0)  # let the waiter subscribe; correctness does not depend on it
    assert not waiter.done()
    await store.complete_assessment(aid, {"ok": True})
    done = await asyncio.wait_for(waiter, 20)
    assert (done.state, done.result_data) == (State.COMPLETED, {"ok": True})


async def test_wait_returns_at_once_when_already_complete(store: AssessmentStore) -> None:
    """wait_for_completion on an already completed assessment returns immediately."""
    aid = await store.create_assessment({"k": "before"})
    await store.start_assessment(aid)
    await store.complete_assessment(aid, 1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    done = await store.wait_for_completion(aid, timeout=10)
    assert done.state is State.COMPLETED
    assert loop.time() - t0 < 5  # far below the timeout: it did not wait for one


async def test_wait_timeout_names_id_and_timeout(store: AssessmentStore) -> None:
    """A wait that times out raises WaitTimeout carrying the id and the timeout."""
    aid = await store.create_assessment({"k": "stuck"})
    with pytest.raises(WaitTimeout) as info:
        await store.wait_for_completion(aid, timeout=0.3)
    assert info.value.assessment_id == aid and info.value.timeout_s == 0.3
    assert aid in str(info.value) and "0.3 s" in str(info.value)


@pytest.mark.parametrize("final", ["cancel", "complete"])
async def test_completing_a_finished_assessment_is_refused_and_appends_nothing(
    store: AssessmentStore, final: str
) -> None:
    """complete on a CANCELLED or COMPLETED assessment raises InvalidTransition naming id, state and
    transition, and no record reaches the events topic."""
    aid = await store.create_assessment({"k": final})
    await store.start_assessment(aid)
    if final == "cancel":
        await store.cancel_assessment(aid, "user asked")
    else:
        await store.complete_assessment(aid, {"first": True})
    state = (await store.get_state(aid)).state
    ends_before = await topic_end_offsets(store.settings, store.settings.events_topic)
    with pytest.raises(InvalidTransition) as info:
        await store.complete_assessment(aid, {"second": True})
    assert (info.value.assessment_id, info.value.state, info.value.transition) == (aid, state.value, "complete")
    assert aid in str(info.value) and state.value in str(info.value)
    assert await topic_end_offsets(store.settings, store.settings.events_topic) == ends_before
    after = await store.get_state(aid)
    assert (after.state, after.version) == (state, 3)


async def test_unknown_id_is_not_found(store: AssessmentStore) -> None:
    """Reading or transitioning an id that was never created raises AssessmentNotFound."""
    with pytest.raises(AssessmentNotFound):
        await store.get_state("never-created")
    with pytest.raises(AssessmentNotFound):
        await store.start_assessment("never-created")


async def test_counts_and_ids_reflect_the_projection(store: AssessmentStore) -> None:
    """count and all-ids include a new assessment under its state."""
    before = await store.get_assessment_count(State.PENDING)
    aid = await store.create_assessment({"k": "count"})
    assert await store.get_assessment_count(State.PENDING) == before + 1
    assert aid in await store.get_all_assessment_ids(State.PENDING)


def test_sync_client_drives_a_lifecycle(stack_settings: Settings) -> None:
    """SyncAssessmentStore does create/start/complete/wait from plain synchronous code."""
    with SyncAssessmentStore(stack_settings) as store:
        aid = store.create_assessment({"sync": True})
        store.start_assessment(aid)
        store.complete_assessment(aid, {"ok": 1})
        done = store.wait_for_completion(aid, timeout=10)
    assert (done.state, done.result_data, done.version) == (State.COMPLETED, {"ok": 1}, 3)
