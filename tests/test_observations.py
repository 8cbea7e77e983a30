"""The rollout's observation windows (migration/_observations.py): what a publisher attached to routers
reads from their counters per window; pure, no services (the publisher is never started)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from assessment_store.core import Assessment, BackendError, KafkaUnavailable, Settings, State
from assessment_store.migration import (
    LATENCY_BUCKETS_MS,
    MigrationFlags,
    MigrationRouter,
    ObservationPublisher,
    StoreBackend,
    WindowObservation,
)
from assessment_store.migration.testing import InMemoryLegacyBackend


class _Store:
    """A store side that answers at once, or fails with a backend error while ``failing``."""

    def __init__(self) -> None:
        now = datetime.now(UTC)
        self.state = Assessment("obs-1", State.PROCESSING, 2, 50, None, now, now, {"x": 1})
        self.failing = False

    async def get_state(self, assessment_id: str) -> Assessment:
        if self.failing:
            raise KafkaUnavailable("obs test: the store is down")
        return self.state


class _Flags:
    def __init__(self, flags: MigrationFlags) -> None:
        self.flags = flags

    def current(self) -> MigrationFlags:
        return self.flags


def _router(store: _Store, pub: ObservationPublisher, **flags: bool) -> MigrationRouter:
    legacy = InMemoryLegacyBackend()
    return MigrationRouter(cast(StoreBackend, store), legacy,
                           _Flags(MigrationFlags(enable_assessment_store=True, enable_dual_mode=False, **flags)),
                           observer=pub, sync_before_serve=False)


async def test_a_window_holds_the_calls_made_since_the_previous_close_and_nothing_before_attach() -> None:
    """Calls before a router is attached belong to no window; each close reports only what came after the previous one."""
    store = _Store()
    pub = ObservationPublisher(Settings(), window_s=60, instance_id="obs-test")
    early = MigrationRouter(cast(StoreBackend, store), InMemoryLegacyBackend(),
                            _Flags(MigrationFlags(enable_assessment_store=True, enable_dual_mode=False)),
                            sync_before_serve=False)
    await early.get_state("obs-1")
    pub.attach(early.stats)
    pub.attach(early.stats)  # attaching twice changes nothing
    for _ in range(3):
        await early.get_state("obs-1")
    first = pub._close(60.0)
    assert (first.calls, first.errors, first.failures, sum(first.latency)) == (3, 0, 0, 3)
    await early.get_state("obs-1")
    second = pub._close(120.0)
    assert (second.start, second.calls, sum(second.latency)) == (60.0, 1, 1)
    assert pub._close(180.0).calls == 0


async def test_errors_and_failures_are_counted_and_several_routers_add_up() -> None:
    """A store error rescued by the fallback is an error, not a failure; without fallback it is both; two routers sum."""
    with_fallback, without = _Store(), _Store()
    pub = ObservationPublisher(Settings(), window_s=60, instance_id="obs-test")
    a = _router(with_fallback, pub)
    b = _router(without, pub, enable_legacy_fallback=False)
    with_fallback.failing = without.failing = True
    legacy = cast(InMemoryLegacyBackend, a.legacy)
    await legacy.create_assessment({"x": 1}, assessment_id="obs-1")
    try:
        await a.get_state("obs-1")  # store fails, legacy answers
    except BackendError:
        pass
    failed = False
    try:
        await b.get_state("obs-1")  # store fails, nobody rescues it
    except BackendError:
        failed = True
    assert failed
    with_fallback.failing = without.failing = False
    await a.get_state("obs-1")
    await b.get_state("obs-1")
    obs = pub._close(60.0)
    assert (obs.calls, obs.errors, obs.failures) == (4, 2, 1)
    assert obs.legacy_calls == 1


async def test_latency_is_observed_for_the_gates_even_with_enable_metrics_off() -> None:
    """The router feeds its latency histograms whenever an observer is attached, whatever enableMetrics says."""
    store = _Store()
    pub = ObservationPublisher(Settings(), window_s=60, instance_id="obs-test")
    router = _router(store, pub, enable_metrics=False)
    for _ in range(5):
        await router.get_state("obs-1")
    obs = pub._close(60.0)
    assert sum(obs.latency) == 5 and obs.latency[0] == 5  # in-memory answers: under a millisecond


def test_records_of_the_previous_bucket_layout_are_read_without_lowering_any_latency() -> None:
    """A 20-bucket record from an earlier publisher: each count moves to the first current bucket at or above its bound."""
    previous = [0] * 20
    previous[7] = 5   # <= 200 ms
    previous[12] = 2  # <= 2 s
    previous[19] = 1  # +Inf
    obs = WindowObservation.from_json({"instance": "old", "start": 0, "windowS": 1, "calls": 8, "errors": 0,
                                       "failures": 0, "latency": previous})
    assert len(obs.latency) == len(LATENCY_BUCKETS_MS)
    assert {LATENCY_BUCKETS_MS[i]: n for i, n in enumerate(obs.latency) if n} == {250.0: 5, 2500.0: 2,
                                                                                   float("inf"): 1}
