"""The projector's fold: duplicates are ignored and counted, offsets move with the rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from assessment_store import AssessmentStore, State
from assessment_store.core import Event, ProgressUpdated, Started
from assessment_store.testing import eventually
from assessment_store.projections import connect
from assessment_store.streams.testing import EventProducer

pytestmark = pytest.mark.stack


async def _anomalies(store: AssessmentStore, aid: str) -> list[tuple[str, int]]:
    conn = await connect(store.settings)
    try:
        rows = await conn.fetch(
            "SELECT kind, version FROM projection.anomalies WHERE assessment_id = $1 ORDER BY id", aid
        )
        return [(r["kind"], r["version"]) for r in rows]
    finally:
        await conn.close()


async def test_redelivered_event_is_ignored_and_recorded(store: AssessmentStore) -> None:
    """Appending an already-applied event again changes no row and leaves a 'duplicate' anomaly."""
    aid = await store.create_assessment({"k": "dup"})
    await store.start_assessment(aid)
    before = await store.get_state(aid)
    history = await store.get_history(aid)
    assert history[-1]["version"] == 2
    async with EventProducer(store.settings) as producer:  # re-send version 2 with its own event id
        now = datetime.now(UTC)
        await producer.append(Event(aid, 2, Started(), now, now, event_id=str(history[-1]["event_id"])))
    assert await eventually(lambda: _anomalies(store, aid), lambda a: a == [("duplicate", 2)],
                            what="duplicate anomaly")
    after = await store.get_state(aid)
    assert after == before and after.state is State.PROCESSING


async def test_version_gap_is_not_applied(store: AssessmentStore) -> None:
    """An event whose version skips ahead is held out of the projection and reported as a gap."""
    aid = await store.create_assessment({"k": "gap"})
    async with EventProducer(store.settings) as producer:
        now = datetime.now(UTC)
        await producer.append(Event(aid, 5, ProgressUpdated(10), now, now))
    assert await eventually(lambda: _anomalies(store, aid), lambda a: a == [("version_gap", 5)],
                            what="gap anomaly")
    assert (await store.get_state(aid)).version == 1


async def test_event_times_are_stored_to_the_microsecond(store: AssessmentStore) -> None:
    """History and outcome times are stored exactly, before 2000 and after it, as the events carry them."""
    aid = await store.create_assessment({"k": "times"})
    occurred = datetime(2031, 7, 9, 23, 59, 59, 999999, tzinfo=UTC)
    recorded = datetime(1999, 12, 31, 23, 59, 59, 1, tzinfo=UTC)
    async with EventProducer(store.settings) as producer:
        await producer.append(Event(aid, 2, ProgressUpdated(10), occurred, recorded))
    history = await eventually(lambda: store.get_history(aid), lambda h: len(h) == 2, what="the second event")
    assert (history[1]["occurred_at"], history[1]["recorded_at"]) == (occurred, recorded)
    conn = await connect(store.settings)
    try:  # the creating command's outcome carries its event's recorded time
        processed = await conn.fetchval("SELECT processed_at FROM projection.command_outcomes WHERE event_id = $1",
                                        history[0]["event_id"])
    finally:
        await conn.close()
    assert processed == history[0]["recorded_at"] and processed.tzinfo is not None
