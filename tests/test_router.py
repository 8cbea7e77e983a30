"""The dual-mode router (``bridge.MigrationRouter``): sticky routing, fallback, and a lifecycle through the real store.

Flags come from a real ``FlagStore`` on the session's broker. The legacy side is ``InMemoryLegacyBackend``, a
test double for the router's routing logic only; the real legacy service is exercised by the bridge's tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from assessment_store import (
    AssessmentStore,
    BackendError,
    DatabaseUnavailable,
    InvalidTransition,
    Settings,
    State,
)
from assessment_store.testing import eventually
from assessment_store.migration import (
    FlagStore,
    LegacyNotSynced,
    MigrationRouter,
    MismatchLog,
    ShadowObserver,
    Side,
    StoreNotSynced,
)
from assessment_store.migration.testing import InMemoryLegacyBackend
from assessment_store.projections import connect

pytestmark = pytest.mark.stack


@pytest.fixture
async def flags(stack_settings: Settings) -> AsyncIterator[FlagStore]:
    """A FlagStore on a topic of its own (default flags: everything on legacy)."""
    async with FlagStore(stack_settings, topic=f"test.router-flags.{uuid.uuid4().hex[:12]}") as f:
        yield f


class UnreachableStore:
    """The store's side with PostgreSQL and Kafka on a closed port: every call really tries to connect
    to 127.0.0.1:1 and fails with the store's own BackendError."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.model_copy(update={"postgres_port": 1, "postgres_dsn": None,
                                                    "bootstrap_servers": "127.0.0.1:1"})

    async def _fail(self, *_args: Any, **_kwargs: Any) -> Any:
        conn = await connect(self.settings, timeout_s=2.0)  # raises DatabaseUnavailable: nothing listens
        await conn.close()
        raise AssertionError("port 1 answered")

    create_assessment = start_assessment = update_progress = complete_assessment = _fail
    fail_assessment = cancel_assessment = get_state = find_state = get_history = wait_for_completion = _fail


async def test_same_id_goes_to_the_same_side_on_every_call(flags: FlagStore) -> None:
    """At 30 % every call for one assessment (create, start, progress, complete, get, wait) goes to one side."""
    await flags.update("test", enable_assessment_store=True, enable_dual_mode=True, migration_percentage=30)
    legacy = InMemoryLegacyBackend()
    # Routing only: sync before serve (which asks the store) is tested on its own below.
    router = MigrationRouter(_NoStore(), legacy, flags, sync_before_serve=False)
    legacy_ids = []
    for i in range(200):
        aid = f"sticky-{i}"
        expected = router.side_for(aid)
        assert all(router.side_for(aid) == expected for _ in range(5))
        if expected is Side.LEGACY:
            legacy_ids.append(aid)
            await router.create_assessment({"i": i}, assessment_id=aid)
            await router.start_assessment(aid)
            await router.update_progress(aid, 50, "half")
            await router.complete_assessment(aid, {"ok": True})
            assert (await router.wait_for_completion(aid, 1.0)).state is State.COMPLETED
            assert (await router.get_state(aid)).version == 4
    assert router.stats.calls["store"] == 0
    assert router.stats.calls["legacy"] == 6 * len(legacy_ids)
    assert sorted(legacy.assessments) == sorted(legacy_ids)


async def test_thirty_percent_split_over_100000_ids(flags: FlagStore) -> None:
    """Over 100,000 random ids at 30 % the share routed to the store is within +/-1 point (decision only)."""
    await flags.update("test", enable_assessment_store=True, enable_dual_mode=True, migration_percentage=30)
    router = MigrationRouter(_NoStore(), InMemoryLegacyBackend(), flags)
    current = flags.current()
    n = 100_000
    to_store = sum(router.side_for(str(uuid.uuid4()), current) is Side.STORE for _ in range(n))
    assert abs(to_store / n * 100 - 30) <= 1.0


async def test_flags_select_all_legacy_all_store_or_the_split(flags: FlagStore) -> None:
    """Store off -> legacy; store on without dual mode -> store; both on -> the sticky split; changes apply live."""
    router = MigrationRouter(_NoStore(), InMemoryLegacyBackend(), flags)
    ids = [f"mode-{i}" for i in range(1000)]
    assert {router.side_for(a) for a in ids} == {Side.LEGACY}
    await flags.update("test", enable_assessment_store=True)
    assert {router.side_for(a) for a in ids} == {Side.STORE}
    await flags.update("test", enable_dual_mode=True, migration_percentage=50)
    assert {router.side_for(a) for a in ids} == {Side.STORE, Side.LEGACY}
    await flags.update("test", migration_percentage=100)
    assert {router.side_for(a) for a in ids} == {Side.STORE}


async def test_store_backend_error_falls_back_to_legacy_and_is_counted(flags: FlagStore) -> None:
    """With legacy fallback on, a store call failing with BackendError (unreachable port) is served by legacy."""
    await flags.update("test", enable_assessment_store=True, enable_legacy_fallback=True)
    legacy = InMemoryLegacyBackend()
    router = MigrationRouter(UnreachableStore(flags.settings), legacy, flags)
    aid = await router.create_assessment({"x": 1})
    assert aid in legacy.assessments
    # The fallback pinned the id to legacy in this process: later calls find it there. Sync before
    # serve cannot ask the store (down): legacy serves anyway, and that is counted.
    assert (await router.start_assessment(aid)).state is State.PROCESSING
    assert router.stats.sync_check_failures == 1
    assert router.stats.fallbacks == 1
    assert router.stats.errors["store"] == 1
    assert router.stats.calls == {"store": 1, "legacy": 2}
    # An id created elsewhere still goes to the store first, fails, and falls back.
    legacy_only = await legacy.create_assessment({}, assessment_id="elsewhere")
    assert (await router.get_state(legacy_only)).state is State.PENDING
    assert router.stats.fallbacks == 2


async def test_without_fallback_the_backend_error_reaches_the_caller(flags: FlagStore) -> None:
    """With legacy fallback off, the store's BackendError is raised, counted as an error, and legacy is not called."""
    await flags.update("test", enable_assessment_store=True, enable_legacy_fallback=False)
    legacy = InMemoryLegacyBackend()
    router = MigrationRouter(UnreachableStore(flags.settings), legacy, flags)
    with pytest.raises(DatabaseUnavailable):
        await router.create_assessment({"x": 1})
    assert isinstance(DatabaseUnavailable("x"), BackendError)
    assert router.stats.fallbacks == 0 and router.stats.errors["store"] == 1 and not legacy.calls


async def test_invalid_transition_is_not_retried_on_legacy(flags: FlagStore, store: AssessmentStore) -> None:
    """A store refusal (InvalidTransition) reaches the caller as it is: no fallback, counted as refused."""
    await flags.update("test", enable_assessment_store=True, enable_legacy_fallback=True)
    legacy = InMemoryLegacyBackend()
    router = MigrationRouter(store, legacy, flags)
    aid = await router.create_assessment({"x": 1})
    with pytest.raises(InvalidTransition) as info:
        await router.complete_assessment(aid, {"too": "early"})
    assert info.value.assessment_id == aid and info.value.state == "PENDING"
    assert router.stats.fallbacks == 0 and router.stats.refused["store"] == 1
    assert not legacy.calls


async def test_full_lifecycle_through_the_real_store_at_100_percent(flags: FlagStore, store: AssessmentStore) -> None:
    """At 100 % in dual mode, a lifecycle through the router lands in the real store and legacy sees nothing."""
    await flags.update("test", enable_assessment_store=True, enable_dual_mode=True, migration_percentage=100)
    legacy = InMemoryLegacyBackend()
    router = MigrationRouter(store, legacy, flags)
    ids = [await router.create_assessment({"n": i}) for i in range(5)]
    for i, aid in enumerate(ids):
        await router.start_assessment(aid)
        await router.update_progress(aid, 40, "scoring")
        if i % 2:
            await router.fail_assessment(aid, "boom")
        else:
            await router.complete_assessment(aid, {"score": i})
    for i, aid in enumerate(ids):
        final = await router.wait_for_completion(aid, 10.0)
        assert final.state is (State.FAILED if i % 2 else State.COMPLETED)
        assert (await store.get_state(aid)).version == 4
    got = await eventually(lambda: router.get_state(ids[0]), lambda s: s.result_data == {"score": 0})
    assert got.request_data == {"n": 0}
    assert router.stats.calls["legacy"] == 0 and router.stats.calls["store"] == 5 * 4 + 5 + 1
    assert not legacy.calls and not legacy.assessments


async def test_lowered_percentage_waits_until_legacy_holds_the_store_changes(
    flags: FlagStore, store: AssessmentStore
) -> None:
    """After the percentage drops, legacy serves a store-written assessment only once it reports the store's last version."""
    await flags.update("test", enable_assessment_store=True, enable_dual_mode=True, migration_percentage=100)
    legacy = InMemoryLegacyBackend()
    router = MigrationRouter(store, legacy, flags, sync_timeout_s=0.3)
    aid = await router.create_assessment({"n": 1})
    await router.start_assessment(aid)
    await router.update_progress(aid, 70, "scoring")
    await flags.update("test", migration_percentage=0)
    assert router.side_for(aid) is Side.LEGACY
    # Nothing reached legacy: refusing to answer beats answering "not found" or a stale state.
    with pytest.raises(LegacyNotSynced) as info:
        await router.get_state(aid)
    assert (info.value.assessment_id, info.value.store_version, info.value.legacy_version) == (aid, 3, 0)
    assert isinstance(info.value, BackendError) and info.value.retriable
    assert router.stats.sync_timeouts == 1 and "get" not in legacy.calls

    # The reverse sync delivers while the call waits: the call then goes to legacy.
    router.sync_timeout_s = 30.0
    polled = legacy.calls["synced_version"]
    waiting = asyncio.create_task(router.get_state(aid))
    await eventually(lambda: _value(legacy.calls["synced_version"]), lambda n: n >= polled + 2,
                     what="the call polling legacy")
    legacy.assessments[aid] = dataclasses.replace(await store.get_state(aid))
    legacy.synced[aid] = 3
    assert (await asyncio.wait_for(waiting, 30)).progress == 70
    assert router.stats.sync_waits == 2 and legacy.calls["get"] == 1
    # Found in sync: later calls do not ask again, until the flags change.
    polls = legacy.calls["synced_version"]
    await router.get_state(aid)
    assert legacy.calls["synced_version"] == polls
    # An assessment the store never wrote (born on legacy) is served at once.
    await legacy.create_assessment({}, assessment_id=f"legacy-born-{uuid.uuid4().hex[:6]}")
    checks = router.stats.sync_checks
    await router.get_state(next(a for a in legacy.assessments if a.startswith("legacy-born-")))
    assert router.stats.sync_checks == checks + 1 and router.stats.sync_timeouts == 1


async def test_raised_percentage_waits_until_the_store_holds_this_routers_legacy_write(
    flags: FlagStore, store: AssessmentStore
) -> None:
    """After the percentage rises, the store serves an assessment this router last wrote on legacy only once the
    store holds that write (the bridge's job); past the timeout StoreNotSynced is raised once, then calls go on."""
    await flags.update("test", enable_assessment_store=True, enable_dual_mode=True, migration_percentage=100)
    legacy = InMemoryLegacyBackend()
    router = MigrationRouter(store, legacy, flags, sync_timeout_s=0.3)
    aid = await router.create_assessment({"n": 2})
    await router.start_assessment(aid)
    await flags.update("test", migration_percentage=0)
    legacy.assessments[aid] = dataclasses.replace(await store.get_state(aid))  # the reverse sync's work
    legacy.synced[aid] = 2
    assert (await router.update_progress(aid, 60, "at 60")).message == "at 60"  # served by legacy
    await flags.update("test", migration_percentage=100)
    assert router.side_for(aid) is Side.STORE
    # No bridge here: the store never gets "at 60". Answering "at 0" would be the stale state.
    with pytest.raises(StoreNotSynced) as info:
        await router.get_state(aid)
    assert info.value.assessment_id == aid and info.value.retriable
    assert router.stats.store_sync_timeouts == 1
    assert (await router.get_state(aid)).progress == 0  # raised once: the next call is served

    # Another legacy write; the bridge delivers it while a store-routed call waits.
    await flags.update("test", migration_percentage=0)
    legacy.synced[aid] = 2
    await router.update_progress(aid, 80, "at 80")
    await flags.update("test", migration_percentage=100)
    router.sync_timeout_s = 30.0
    waiting = asyncio.create_task(router.complete_assessment(aid, {"score": 1}))
    await eventually(lambda: _value(router.stats.store_sync_waits), lambda n: n >= 2, what="the call waiting")
    assert not waiting.done()
    await store.update_progress(aid, 80, "at 80")  # what the bridge appends for legacy's write
    done = await asyncio.wait_for(waiting, 30)
    assert (done.state, done.message) == (State.COMPLETED, "at 80")


async def test_shadow_observation_never_delays_the_caller_and_keeps_mismatches(
    flags: FlagStore, store: AssessmentStore, stack_settings: Settings
) -> None:
    """A store-served call returns while its legacy shadow is still blocked; a differing legacy copy is kept with both values."""
    await flags.update("test", enable_assessment_store=True, enable_dual_mode=True, migration_percentage=100,
                       enable_shadow_comparison=True)
    gate = asyncio.Event()

    class GatedLegacy(InMemoryLegacyBackend):
        async def find_state(self, assessment_id: str) -> Any:
            await gate.wait()  # the shadow side is as slow as the test wants
            return await super().find_state(assessment_id)

    legacy = GatedLegacy()
    async with MismatchLog(stack_settings) as mismatches:
        observer = ShadowObserver(mismatches, timeout_s=5.0)
        router = MigrationRouter(store, legacy, flags, shadow=observer)
        aid = await router.create_assessment({"n": 2})
        await router.start_assessment(aid)
        done = await router.complete_assessment(aid, {"score": 1})
        # Three calls answered while their three observations are still blocked on the shadow side.
        assert done.state is State.COMPLETED
        assert (observer.stats.scheduled, observer.stats.in_flight) == (3, 3)
        # The legacy copy ended differently: the completion is a mismatch; the create and start
        # observations find legacy already past their step (inconclusive, nothing to compare).
        legacy.assessments[aid] = dataclasses.replace(done, result_data={"score": 2})
        gate.set()
        await observer.drain(30)
        assert (observer.stats.mismatched, observer.stats.inconclusive, observer.stats.in_flight) == (1, 2, 0)
        # A read of an assessment both sides agree on matches.
        same = await router.create_assessment({"n": 3})
        legacy.assessments[same] = await store.get_state(same)
        await router.get_state(same)
        await observer.drain(30)
        assert observer.stats.matched >= 1 and observer.stats.mismatched == 1
        [kept] = await mismatches.latest(assessment_id=aid)
    assert (kept["kind"], kept["operation"], kept["primarySide"], kept["shadowSide"]) == ("mismatch", "complete",
                                                                                        "store", "legacy")
    assert kept["differences"] == ["result"]
    assert (kept["primary"]["result"], kept["shadow"]["result"]) == ({"score": 1}, {"score": 2})
    assert kept["primary"]["state"] == kept["shadow"]["state"] == "COMPLETED"
    assert kept["primaryMs"] > 0 and "result" in kept["reason"]


async def _value(x: Any) -> Any:
    return x


class _NoStore:
    """For routing-only tests: any store call is a test failure."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the store was called ({name}) although routing sent the call to legacy")
