"""The projector under faults and at scale: kill -9 mid-stream, scale-out and rebalances, many waiters."""

from __future__ import annotations

import asyncio
import os
import random
import signal

import pytest

from assessment_store import AssessmentStore, Settings, State
from assessment_store.testing import eventually, produce_lifecycles, projected_event_count
from assessment_store.projections import REBUILD_SCHEMA, connect, replay
from assessment_store.stack import ProjectorService, Stack
from assessment_store.stack._procs import is_alive, wait_until

pytestmark = pytest.mark.stack


async def _stream(settings: Settings, prefix: str, chunks: int, per_chunk: int) -> int:
    """Append lifecycles in chunks, paced so that the stream spans the faults injected meanwhile."""
    total = 0
    for c in range(chunks):
        total += await produce_lifecycles(settings, per_chunk, prefix=f"{prefix}-{c}")
        await asyncio.sleep(0.2)  # pacing of the load, not synchronization
    return total


async def _equals_fresh_replay(settings: Settings, prefix: str) -> None:
    """A dry-run rebuild from offset 0 equals the live projection, by checksum (under the swap lock)
    and row by row for this test's assessments (others may move on once the lock is released)."""
    report = await replay(settings, dry_run=True, restart=True)
    assert report.verification.ok, report.verification
    conn = await connect(settings)
    try:
        for table in ("assessments", "assessment_events"):
            diff = await conn.fetchval(
                f"SELECT count(*) FROM ((SELECT * FROM projection.{table} WHERE assessment_id LIKE $1"
                f" EXCEPT SELECT * FROM {REBUILD_SCHEMA}.{table} WHERE assessment_id LIKE $1)"
                f" UNION ALL (SELECT * FROM {REBUILD_SCHEMA}.{table} WHERE assessment_id LIKE $1"
                f" EXCEPT SELECT * FROM projection.{table} WHERE assessment_id LIKE $1)) d", prefix + "-%")
            assert diff == 0, f"{table}: {diff} rows differ from a fresh replay"
        await conn.execute(f"DROP SCHEMA {REBUILD_SCHEMA} CASCADE")
    finally:
        await conn.close()


async def _kill_9(service: ProjectorService) -> None:
    pid = service.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert await asyncio.to_thread(wait_until, lambda: not is_alive(pid), 10.0)


async def test_kill_9_mid_stream_five_times(stack_settings: Settings) -> None:
    """The projector killed -9 at random points five times during a stream, restarted each time:
    every event is projected exactly once and the projection equals a fresh replay."""
    s = stack_settings
    stack = Stack(s)
    rng = random.Random(9)
    stream = asyncio.create_task(_stream(s, "kill9x", chunks=25, per_chunk=400))
    for _ in range(5):
        await asyncio.sleep(rng.uniform(0.2, 0.8))  # a random point of the stream, not a wait for state
        await _kill_9(stack.projector)
        await asyncio.to_thread(stack.up, ["projector"], lambda _m: None)
    total = await stream
    assert total == 25 * 400 * 4
    await eventually(lambda: projected_event_count(s, "kill9x"), lambda c: c == total, timeout_s=120,
                     what="all streamed events projected")
    conn = await connect(s)
    try:
        # Applied once each: every assessment at version 4 with exactly 4 history rows. (Records a
        # killed projector's last statement committed after its successor read the offsets are
        # delivered again: the version guard refuses them and counts them as 'duplicate' anomalies.)
        wrong = await conn.fetchval(
            "SELECT count(*) FROM projection.assessments a WHERE assessment_id LIKE 'kill9x-%' AND (version <> 4"
            " OR (SELECT count(*) FROM projection.assessment_events e WHERE e.assessment_id = a.assessment_id) <> 4)")
        assessments = await conn.fetchval("SELECT count(*) FROM projection.assessments WHERE assessment_id LIKE 'kill9x-%'")
    finally:
        await conn.close()
    assert (wrong, assessments) == (0, total // 4)
    await _equals_fresh_replay(s, "kill9x")


async def test_scale_out_and_rebalances_lose_and_duplicate_nothing(stack_settings: Settings) -> None:
    """With a second projector, then a third started and the second stopped mid-stream, every event
    is projected once and the projection equals a fresh replay."""
    s = stack_settings
    second, third = ProjectorService(s, instance=2), ProjectorService(s, instance=3)
    await asyncio.to_thread(second.start, lambda _m: None)
    try:
        stream = asyncio.create_task(_stream(s, "scale", chunks=20, per_chunk=400))
        await asyncio.sleep(1.0)  # mid-stream
        await asyncio.to_thread(third.start, lambda _m: None)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(second.stop)
        total = await stream
        await eventually(lambda: projected_event_count(s, "scale"), lambda c: c == total, timeout_s=120,
                         what="all streamed events projected")
        await _equals_fresh_replay(s, "scale")
    finally:
        await asyncio.to_thread(second.stop)
        await asyncio.to_thread(third.stop)


async def test_ten_thousand_waiters_share_one_connection(stack_settings: Settings) -> None:
    """10,000 concurrent wait_for_completion calls in one process all wake on completion, none hangs,
    and they share one LISTEN connection."""
    async with AssessmentStore(stack_settings) as store:
        ids = [await store.create_assessment({"w": i}) for i in range(100)]
        waiters = [asyncio.create_task(store.wait_for_completion(aid, timeout=120)) for aid in ids for _ in range(100)]
        await eventually(lambda: _waiting(store), lambda n: n == 10_000, timeout_s=60, what="10,000 registered waiters")
        listener_conn = store._listener._conn
        assert listener_conn is not None
        await asyncio.gather(*(store.cancel_assessment(aid, "waiters test") for aid in ids))
        done = await asyncio.wait_for(asyncio.gather(*waiters), 120)
        assert len(done) == 10_000 and all(a.state is State.CANCELLED for a in done)
        assert store._listener._conn is listener_conn  # the same single connection throughout
        assert store._listener.waiting == 0


async def _waiting(store: AssessmentStore) -> int:
    return store._listener.waiting
