"""Dual mode end to end: Python writers through ``MigrationRouter`` at 30 %, against the real store and the real
legacy service (the Node sample service behind its HTTP face, with the tap attached and the reverse sync imported).

Legacy-routed assessments reach the store through tap -> ``legacy.assessment-events`` -> the stack's bridge ->
processor; store-routed ones are written directly and reach the legacy side through ``ReverseSync`` ->
``legacy.assessment-events.reverse`` -> the Node service's reverse consumer.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from assessment_store import (
    AssessmentNotFound,
    AssessmentStore,
    BackendError,
    InvalidTransition,
    Settings,
    State,
    ValidationError,
    WaitTimeout,
)
from assessment_store.testing import eventually, start_group_at_end
from assessment_store.migration import (
    FlagStore,
    HttpLegacyBackend,
    LegacyHttpProcess,
    LegacyNotSynced,
    MigrationRouter,
    MismatchLog,
    ReverseSync,
    ShadowObserver,
    Side,
    reverse_topic_spec,
    start_legacy_http,
)
from assessment_store.projections import connect
from assessment_store.streams import ensure_topics

pytestmark = pytest.mark.stack

COUNT = 300


@pytest.fixture
async def legacy_http(stack_settings: Settings, tmp_path: Path) -> AsyncIterator[LegacyHttpProcess]:
    """The Node sample legacy service behind HTTP, tapping into the session's legacy topic (stopped with SIGTERM)."""
    s = stack_settings
    run = uuid.uuid4().hex[:8]
    await ensure_topics(s, [reverse_topic_spec(s)])
    legacy = await start_legacy_http(s, group=f"legacy-reverse-e2e-{run}", emitter_id=f"legacy-http-e2e-{run}",
                                     stderr_path=tmp_path / "legacy-http.stderr")
    try:
        yield legacy
        summary = await legacy.stop()
        assert legacy.proc.returncode == 0 and summary is not None and summary["tap"]["buffered"] == 0, (
            summary, legacy.stderr_path.read_text())
        assert summary["tap"]["forwarded"] == summary["tap"]["emitted"]
    finally:
        await legacy.stop()


async def _projection(settings: Settings, ids: list[str]) -> tuple[dict[str, dict[str, Any]],
                                                                   dict[str, list[tuple[int, str, str]]]]:
    """Rows of projection.assessments (with a per-id row count) and each id's event history."""
    conn = await connect(settings)
    try:
        rows = await conn.fetch(
            "SELECT assessment_id, state, version, request_data, result_data, error_message,"
            " count(*) OVER (PARTITION BY assessment_id) AS n"
            " FROM projection.assessments WHERE assessment_id = ANY($1::text[])", ids)
        events = await conn.fetch(
            "SELECT assessment_id, version, type, source FROM projection.assessment_events"
            " WHERE assessment_id = ANY($1::text[]) ORDER BY assessment_id, version", ids)
    finally:
        await conn.close()
    histories: dict[str, list[tuple[int, str, str]]] = {}
    for e in events:
        histories.setdefault(e["assessment_id"], []).append((e["version"], e["type"], e["source"]))
    return {r["assessment_id"]: dict(r) for r in rows}, histories


async def test_http_legacy_backend_translates_errors(legacy_http: LegacyHttpProcess) -> None:
    """HttpLegacyBackend maps 404, 409, 400, a long-poll timeout and a dead port to the store's typed errors."""
    async with HttpLegacyBackend(legacy_http.url) as legacy:
        aid = f"errors-{uuid.uuid4().hex[:8]}"
        assert await legacy.create_assessment({"x": 1}, assessment_id=aid) == aid
        with pytest.raises(InvalidTransition) as dup:
            await legacy.create_assessment({"x": 1}, assessment_id=aid)
        assert (dup.value.assessment_id, dup.value.state, dup.value.transition) == (aid, "PENDING", "create")
        with pytest.raises(InvalidTransition) as early:
            await legacy.complete_assessment(aid, {"too": "early"})
        assert (early.value.assessment_id, early.value.state, early.value.transition) == (aid, "PENDING", "complete")
        with pytest.raises(AssessmentNotFound) as missing:
            await legacy.get_state(f"{aid}-missing")
        assert missing.value.assessment_id == f"{aid}-missing"
        assert await legacy.find_state(f"{aid}-missing") is None
        with pytest.raises(WaitTimeout) as waited:
            await legacy.wait_for_completion(aid, 0.05)
        assert waited.value.assessment_id == aid
        with pytest.raises(ValidationError):
            await legacy.update_progress(aid, 101)
        state = await legacy.start_assessment(aid)
        assert (state.state, state.version, state.request_data) == (State.PROCESSING, 2, {"x": 1})
    async with HttpLegacyBackend("http://127.0.0.1:1", timeout_s=2.0) as dead:
        with pytest.raises(BackendError) as down:
            await dead.get_state(aid)
        assert "127.0.0.1:1" in str(down.value) and aid in str(down.value)


async def test_300_assessments_through_the_router_at_30_percent(
    stack_settings: Settings, store: AssessmentStore, legacy_http: LegacyHttpProcess
) -> None:
    """At 30 % every assessment ends once in the projection in its final state, and legacy has the store-routed ones."""
    s = stack_settings
    run = uuid.uuid4().hex[:8]
    async with FlagStore(s, topic=f"test.e2e-flags.{run}") as flags, HttpLegacyBackend(legacy_http.url) as legacy:
        await flags.update("e2e", enable_assessment_store=True, enable_dual_mode=True, migration_percentage=30)
        reverse = ReverseSync(s, group_id=f"reverse-e2e-{run}")
        await reverse.start()
        stop = asyncio.Event()
        reverse_task = asyncio.create_task(reverse.run(stop))
        try:
            router = MigrationRouter(store, legacy, flags)
            ids = [f"e2e-{run}-{i}" for i in range(COUNT)]
            sides = {aid: router.side_for(aid) for aid in ids}
            gate = asyncio.Semaphore(50)

            async def lifecycle(i: int, aid: str) -> None:
                async with gate:
                    assert await router.create_assessment({"n": i}, assessment_id=aid) == aid
                    await router.start_assessment(aid)
                    await router.update_progress(aid, 50, "half")
                    if i % 5 == 0:
                        await router.fail_assessment(aid, f"boom {i}")
                    else:
                        await router.complete_assessment(aid, {"score": i})
                    final = await router.wait_for_completion(aid, 30)
                    assert final.state is (State.FAILED if i % 5 == 0 else State.COMPLETED), aid

            await asyncio.wait_for(asyncio.gather(*(lifecycle(i, aid) for i, aid in enumerate(ids))), 240)
            assert not reverse_task.done(), reverse_task

            to_store = [a for a in ids if sides[a] is Side.STORE]
            share = len(to_store) / COUNT * 100
            assert 20 <= share <= 40, f"{share:.1f} % routed to the store"
            assert router.stats.fallbacks == 0 and not router.stats.errors and not router.stats.refused
            assert router.stats.calls == {"store": 5 * len(to_store), "legacy": 5 * (COUNT - len(to_store))}

            def expected(i: int) -> dict[str, Any]:
                failed = i % 5 == 0
                return {"state": "FAILED" if failed else "COMPLETED", "version": 4, "request_data": {"n": i},
                        "result_data": None if failed else {"score": i},
                        "error_message": f"boom {i}" if failed else None, "n": 1}

            # Every assessment, whichever side wrote it, is in the projection once, in its final state.
            rows, histories = await eventually(
                lambda: _projection(s, ids),
                lambda got: len(got[0]) == COUNT and all(got[0][a]["state"] == expected(i)["state"]
                                                         for i, a in enumerate(ids)),
                timeout_s=120, what="all 300 assessments projected in their final state")
            for i, aid in enumerate(ids):
                assert {k: rows[aid][k] for k in expected(i)} == expected(i), aid
                h = histories[aid]
                assert [v for v, _, _ in h] == [1, 2, 3, 4], aid
                assert [t for _, t, _ in h].count("AssessmentCreated") == 1, aid
                want_source = "store" if sides[aid] is Side.STORE else "legacy-bridge"
                assert {src for _, _, src in h} == {want_source}, (aid, h)

            # The legacy side has every store-routed assessment (reverse sync) in its final state.
            async def legacy_view() -> dict[str, Any]:
                got = await asyncio.gather(*(legacy.find_state(a) for a in to_store))
                return dict(zip(to_store, got, strict=True))

            index = {aid: i for i, aid in enumerate(ids)}
            seen = await eventually(
                legacy_view,
                lambda v: all(x is not None and x.state.value == expected(index[a])["state"] for a, x in v.items()),
                timeout_s=60, what="store-routed assessments on the legacy side")
            for aid, got in seen.items():
                want = expected(index[aid])
                assert (got.version, got.progress) == (4, 50 if got.state is State.FAILED else 100), aid
                assert (got.request_data, got.result_data, got.error_message) == (
                    want["request_data"], want["result_data"], want["error_message"]), aid
            async with httpx.AsyncClient() as client:
                health = (await client.get(f"{legacy_http.url}/health")).json()
            assert health["reverse"]["conflict"] == 0 and health["reverse"]["invalid"] == 0
            assert health["reverse"]["applied"] >= 4 * len(to_store)
            assert health["tap"]["dropped"] == 0 and health["tap"]["oversized"] == 0
            assert reverse.stats.emitted >= 4 * len(to_store)
        finally:
            stop.set()
            await asyncio.wait_for(reverse_task, 30)
            await reverse.stop()


@asynccontextmanager
async def _reverse_sync(settings: Settings, group: str) -> AsyncIterator[ReverseSync]:
    """A ReverseSync running in the background for the block; stopped (offsets committed) after it."""
    stop = asyncio.Event()
    async with ReverseSync(settings, group_id=group) as sync:
        task = asyncio.create_task(sync.run(stop))
        try:
            yield sync
            assert not task.done(), task
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def test_rollback_syncs_before_legacy_serves_and_shadow_compares_both_sides(
    stack_settings: Settings, store: AssessmentStore, legacy_http: LegacyHttpProcess
) -> None:
    """Store-served lifecycles, then percentage 0 with the reverse sync behind: legacy serves only once synced; shadows agree."""
    s = stack_settings
    run = uuid.uuid4().hex[:8]
    count = 30
    group = f"reverse-rollback-{run}"
    # The session's log is long by now: the group starts at its end.
    await start_group_at_end(s, group, s.events_topic)
    async with FlagStore(s, topic=f"test.rollback-flags.{run}") as flags, HttpLegacyBackend(legacy_http.url) as legacy, \
            MismatchLog(s) as mismatches:
        await flags.update("e2e", enable_assessment_store=True, enable_dual_mode=True, migration_percentage=100,
                           enable_shadow_comparison=True)
        observer = ShadowObserver(mismatches, timeout_s=3.0)
        router = MigrationRouter(store, legacy, flags, shadow=observer, sync_timeout_s=1.0)
        ids = [f"rollback-{run}-{i}" for i in range(count)]

        # 1. Every assessment starts on the store; each call is shadowed on legacy (via the reverse sync).
        async with _reverse_sync(s, group):
            for i, aid in enumerate(ids):
                await router.create_assessment({"n": i}, assessment_id=aid)
                await router.start_assessment(aid)
                await router.update_progress(aid, 50, "half")
            await observer.drain(60)
        assert router.stats.calls == {"store": 3 * count}
        assert (observer.stats.mismatched, observer.stats.missing, observer.stats.shadow_errors) == (0, 0, 0)
        assert observer.stats.matched >= count  # at least every progress step; earlier ones may be overtaken

        # 2. With the reverse sync stopped, the store's last change to `late` cannot reach legacy: its
        #    shadow ends 'missing', kept with both values.
        late = ids[0]
        await router.update_progress(late, 70, "late")
        await observer.drain(60)
        assert observer.stats.missing == 1
        [kept] = await mismatches.latest(assessment_id=late)
        assert (kept["kind"], kept["operation"], kept["differences"]) == ("missing", "progress", ["progress"])
        assert (kept["primary"]["progress"], kept["shadow"]["progress"]) == (70, 50)

        # 3. Roll back (percentage 0): legacy must not serve `late` from its stale copy.
        await flags.update("e2e", migration_percentage=0)
        assert {router.side_for(a) for a in ids} == {Side.LEGACY}
        with pytest.raises(LegacyNotSynced) as info:
            await router.get_state(late)
        assert (info.value.store_version, info.value.legacy_version) == (4, 3)
        router.sync_timeout_s = 60.0
        waiting = asyncio.create_task(router.get_state(late))
        async with _reverse_sync(s, group):  # resumes at its committed offsets, delivers the change
            got = await asyncio.wait_for(waiting, 60)
            assert (got.progress, got.message) == (70, "late")
            assert router.stats.sync_waits >= 1

            # 4. Legacy finishes them all; the tap and the bridge bring the endings into the store,
            #    where the shadows find them.
            for i, aid in enumerate(ids):
                if i % 3 == 0:
                    await router.fail_assessment(aid, f"boom {i}")
                else:
                    await router.complete_assessment(aid, {"score": i})
                final = await router.wait_for_completion(aid, 30)
                assert final.state is (State.FAILED if i % 3 == 0 else State.COMPLETED)
            await observer.drain(60)
        assert router.stats.calls["legacy"] == 1 + 2 * count and not router.stats.errors  # the refused get never reached legacy
        rows, histories = await eventually(
            lambda: _projection(s, ids),
            lambda got: len(got[0]) == count and all(r["state"] in ("COMPLETED", "FAILED") for r in got[0].values()),
            timeout_s=60, what="legacy endings in the projection")
        for i, aid in enumerate(ids):
            h = histories[aid]
            assert [src for _, _, src in h] == ["store"] * (4 if aid == late else 3) + ["legacy-bridge"], (aid, h)
            assert rows[aid]["result_data"] == (None if i % 3 == 0 else {"score": i}), aid
        assert observer.stats.shadow_errors == 0 and observer.stats.skipped_capacity == 0
        assert (observer.stats.mismatched, observer.stats.missing) == (0, 1), (observer.stats,
                                                                           await mismatches.latest(limit=5))
