"""Rebuilding the projection from the log: equality with the live one, resume, swap, time travel."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from assessment_store import AssessmentStore, Settings, State
from assessment_store.core import Created, Event, Started
from assessment_store.testing import eventually, produce_lifecycles, projected_event_count
from assessment_store.projections import REBUILD_SCHEMA, connect, counts_at, replay, state_at
from assessment_store.streams.testing import EventProducer

from .test_metrics import _scrape, _url, _value

pytestmark = pytest.mark.stack

LIFECYCLES = 25_000  # x 4 events = 100,000


class _Interrupt(Exception):
    pass


async def _rows_differ(settings: Settings, a: str, b: str, prefix: str) -> int:
    """Rows of this test's assessments that differ between schemas ``a`` and ``b``. (Other tests'
    assessments may legitimately move on in the live schema after a swap.)"""
    conn = await connect(settings)
    try:
        n = 0
        for table in ("assessments", "assessment_events", "command_outcomes"):
            n += int(await conn.fetchval(
                f"SELECT count(*) FROM ((SELECT * FROM {a}.{table} WHERE assessment_id LIKE $1"
                f" EXCEPT SELECT * FROM {b}.{table} WHERE assessment_id LIKE $1)"
                f" UNION ALL (SELECT * FROM {b}.{table} WHERE assessment_id LIKE $1"
                f" EXCEPT SELECT * FROM {a}.{table} WHERE assessment_id LIKE $1)) d", prefix + "-%"))
        return n
    finally:
        await conn.close()


async def test_100k_event_log_replays_equal_to_live_and_swaps(store: AssessmentStore, stack_settings: Settings) -> None:
    """A 100,000-event log folded live, rebuilt from offset 0 (interrupted once, then resumed) equals
    the live projection by checksum and row by row; the swap keeps the store serving."""
    s = stack_settings
    n = await produce_lifecycles(s, LIFECYCLES, prefix="replay100k")
    assert n == 100_000
    await eventually(lambda: projected_event_count(s, "replay100k"), lambda c: c == n, timeout_s=180,
                     what="live projection of 100,000 events")

    seen = 0

    def interrupt_after_30k(k: int) -> None:
        nonlocal seen
        seen += k
        if seen >= 30_000:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        await replay(s, restart=True, on_batch=interrupt_after_30k)
    dry = await replay(s, dry_run=True)
    assert dry.resumed and not dry.swapped
    assert dry.verification.ok, dry.verification
    assert dry.verification.live_events >= n

    report = await replay(s, keep_old=True)
    assert report.swapped and report.verification.ok and report.kept_old is not None
    assert await _rows_differ(s, "projection", report.kept_old, "replay100k") == 0

    # The live projector noticed the swap and goes on folding into the new tables.
    aid = await store.create_assessment({"after": "swap"})
    await store.start_assessment(aid)
    assert (await store.get_state(aid)).state is State.PROCESSING
    conn = await connect(s)
    try:
        assert not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", REBUILD_SCHEMA)
        await conn.execute(f"DROP SCHEMA {report.kept_old} CASCADE")
    finally:
        await conn.close()


async def test_rebuild_folded_by_worker_processes_equals_live(store: AssessmentStore, stack_settings: Settings) -> None:
    """A rebuild whose partitions are folded by three processes side by side equals the live projection, with every batch counted."""
    s = stack_settings.model_copy(update={"replay_workers": 3, "replay_parallel_min_records": 0})
    n = await produce_lifecycles(s, 2_000, prefix="workers")
    await eventually(lambda: projected_event_count(s, "workers"), lambda c: c == n, timeout_s=120,
                     what="live projection of 8,000 events")
    totals: list[tuple[int, int]] = []
    folded = 0

    def on_batch(k: int) -> None:
        nonlocal folded
        folded += k

    report = await replay(s, dry_run=True, restart=True, on_total=lambda t, d: totals.append((t, d)),
                          on_batch=on_batch)
    assert report.workers == 3
    assert report.verification.ok, report.verification
    assert await _rows_differ(s, "projection", REBUILD_SCHEMA, "workers") == 0
    # Every record up to the end offsets was counted once, the workers' through their reports.
    assert totals and folded >= totals[0][0] - totals[0][1] >= n


async def test_time_travel_from_the_log(store: AssessmentStore, stack_settings: Settings) -> None:
    """state_at and counts_at answer from the log as of a time, and as of an offset."""
    aid = await store.create_assessment({"tt": 1})
    await store.start_assessment(aid)
    history = await store.get_history(aid)
    started_offset = history[-1]["kafka_offset"]
    await asyncio.sleep(0.01)  # a distinct millisecond for the cut (Kafka timestamps are in ms)
    cut = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await store.complete_assessment(aid, {"tt": "done"})

    before = await state_at(stack_settings, aid, at=cut)
    assert before is not None and (before.state, before.version) == (State.PROCESSING, 2)
    by_offset = await state_at(stack_settings, aid, offset=started_offset)
    assert by_offset is not None and by_offset.version == 2
    now = await state_at(stack_settings, aid, at=datetime.now(UTC))
    assert now is not None and now.state is State.COMPLETED
    assert await state_at(stack_settings, aid, at=datetime(2000, 1, 1, tzinfo=UTC)) is None

    then, later = await counts_at(stack_settings, cut), await counts_at(stack_settings, datetime.now(UTC))
    assert later[State.COMPLETED] >= then[State.COMPLETED] + 1  # ours, at least, completed after the cut
    assert then[State.PROCESSING] >= 1  # ours was processing at the cut


async def test_a_command_id_held_by_two_events_keeps_the_first_outcome_live_and_rebuilt(
        stack_settings: Settings) -> None:
    """Two events naming one command (causation id): both applied, its outcome is the first one's, live and rebuilt; outcomes are indexed by assessment for rejections only."""
    s = stack_settings
    prefix = f"cmd{uuid.uuid4().hex[:8]}"
    command = f"{prefix}-command"
    now = datetime.now(UTC)
    # One assessment (one partition, one order), so which event is first is the log's.
    events = [Event(f"{prefix}-a", 1, Created({"n": 0}), now, now, causation_id=command),
              Event(f"{prefix}-a", 2, Started("w"), now, now, causation_id=command)]
    # Enough others that a batch takes the COPY path, not the one-statement path of a few records.
    events += [Event(f"{prefix}-f{i}", 1, Created({"n": i}), now, now, causation_id=f"{prefix}-other-{i}")
               for i in range(200)]
    async with EventProducer(s) as producer:
        for ev in events:
            await producer.append(ev)
    await eventually(lambda: projected_event_count(s, prefix), lambda c: c == len(events), timeout_s=60,
                     what="live projection of the test's events")
    report = await replay(s, dry_run=True, restart=True)
    assert report.verification.ok, report.verification
    assert await _rows_differ(s, "projection", REBUILD_SCHEMA, prefix) == 0
    conn = await connect(s)
    try:
        kept = {schema: await conn.fetch(f"SELECT version, event_id::text FROM {schema}.command_outcomes"
                                         " WHERE command_id = $1", command)
                for schema in ("projection", REBUILD_SCHEMA)}
        others = await conn.fetchval("SELECT count(*) FROM projection.command_outcomes WHERE command_id LIKE $1",
                                     prefix + "-other-%")
        indexes = {schema: sorted(r["indexname"] + ": " + r["indexdef"].split(" USING ")[1] for r in await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'command_outcomes'",
            schema)) for schema in ("projection", REBUILD_SCHEMA)}
    finally:
        await conn.close()
    # Outcomes are indexed by assessment for rejections only (projection schema 14), live and rebuilt.
    for schema, defs in indexes.items():
        assert defs == ["command_outcomes_pkey: btree (command_id)",
                        "command_outcomes_rejections_idx: btree (assessment_id) WHERE (NOT accepted)"], (schema, defs)
    assert [tuple(r) for r in kept["projection"]] == [(1, events[0].event_id)]
    assert [tuple(r) for r in kept[REBUILD_SCHEMA]] == [(1, events[0].event_id)]
    assert others == 200


async def test_rebuild_stores_a_reused_event_id_and_a_refused_one_as_live(stack_settings: Settings) -> None:
    """A rebuild records an event id reused by a later event as an anomaly, and quarantines one PostgreSQL cannot store, as the live fold does."""
    s = stack_settings
    prefix = f"ids{uuid.uuid4().hex[:8]}"
    shared, braced = str(uuid.uuid4()), "{" + str(uuid.uuid4()) + "}"  # braces: not a uuid the driver reads
    now = datetime.now(UTC)
    events = [Event(f"{prefix}-a", 1, Created({"n": 0}), now, now, event_id=shared),
              # The same assessment (one partition, one order): which event keeps the id is the log's.
              Event(f"{prefix}-a", 2, Started("w"), now, now, event_id=shared),
              Event(f"{prefix}-c", 1, Created({"n": 2}), now, now, event_id=braced)]
    # Enough others that a batch takes the COPY path, not the one-statement path of a few records.
    events += [Event(f"{prefix}-f{i}", 1, Created({"n": i}), now, now) for i in range(200)]
    anomalies = "assessment_store_projector_anomalies_total"
    before = _value(await _scrape(_url(s, "projector")), anomalies, kind="reused_event_id")
    async with EventProducer(s) as producer:
        for ev in events:
            await producer.append(ev)
    # Live: the reused id's second event has no history row but an anomaly of its own, c is quarantined.
    await eventually(lambda: projected_event_count(s, prefix), lambda c: c == len(events) - 2, timeout_s=60,
                     what="live projection of the test's events")
    # Counted once the batch is committed, just after its rows are readable: waited for, then exact.
    await eventually(lambda: _scrape(_url(s, "projector")),
                     lambda m: _value(m, anomalies, kind="reused_event_id") >= before + 1, timeout_s=20,
                     what="the projector's reused_event_id count up by 1")
    assert _value(await _scrape(_url(s, "projector")), anomalies, kind="reused_event_id") == before + 1

    report = await replay(s, dry_run=True, restart=True)
    assert report.verification.ok, report.verification
    assert await _rows_differ(s, "projection", REBUILD_SCHEMA, prefix) == 0
    conn = await connect(s)
    try:
        shared_rows = await conn.fetchval(
            f"SELECT count(*) FROM {REBUILD_SCHEMA}.assessment_events WHERE event_id = $1::uuid", shared)
        states = await conn.fetchval(f"SELECT count(*) FROM {REBUILD_SCHEMA}.assessments WHERE assessment_id LIKE $1",
                                     prefix + "-%")
        quarantined = await conn.fetchval(f"SELECT count(*) FROM {REBUILD_SCHEMA}.quarantine WHERE assessment_id = $1",
                                          f"{prefix}-c")
        reused = {schema: await conn.fetch(
            f"SELECT assessment_id, version, event_id, kafka_offset, detail FROM {schema}.anomalies"
            " WHERE kind = 'reused_event_id' AND assessment_id LIKE $1", prefix + "-%")
            for schema in ("projection", REBUILD_SCHEMA)}
    finally:
        await conn.close()
    assert shared_rows == 1 and states == len(events) - 2 and quarantined == 1
    # The second event of a, applied to the state, kept as an anomaly: the same row live and rebuilt.
    assert [tuple(r)[:3] for r in reused["projection"]] == [(f"{prefix}-a", 2, shared)]
    assert [tuple(r) for r in reused["projection"]] == [tuple(r) for r in reused[REBUILD_SCHEMA]]
    assert "already in the history" in reused["projection"][0]["detail"]
    assert report.verification.live_events >= len(events) - 2
