"""The dual-mode router: the migration service every caller goes through, with sticky routing.

Each call picks a side from the live migration flags (``FlagStore.current()``, no I/O):

* ``enable_assessment_store`` off                    -> legacy, every call;
* ``enable_assessment_store`` on, ``enable_dual_mode`` off -> store, every call;
* both on -> ``route_to_store(routing key, migration_percentage, routing_salt)``.

The routing key is the assessment id (``routing_key=`` overrides it; a caller who created with a
routing key must pass the same key on later calls). ``create_assessment`` generates the id *before*
routing, so the side it creates on is the side every later call for that id goes to. A random draw
per call would split one assessment across both systems.

Legacy fallback (``enable_legacy_fallback``): a call the store could not serve because Kafka or
PostgreSQL failed (``BackendError``) is retried on legacy and counted. A refusal by the store
(``StoreUsageError``: invalid transition, not found, validation, version conflict) is an answer,
not an outage, and is never retried elsewhere. Neither is a ``WaitTimeout``/``CommandTimeout``: the
store may still apply that command, and running it on legacy as well could apply it twice.

Sync before serve (``sync_before_serve``, on by default): lowering the percentage (or switching the
store off: a rollback) sends to legacy assessments that may have lived only in the store. Before a
call on such an assessment is served by legacy, the router makes sure legacy holds every change the
store made to it: the store version of its last ``source=store`` event (one query of its history)
must not be above the version legacy reports as reverse-synced (``LegacyBackend.synced_version``).
If it is, the router waits (bounded by ``sync_timeout_s``) for the reverse sync to deliver, and raises
``LegacyNotSynced`` (a retriable ``BackendError`` naming both versions) rather than let legacy answer
from stale state. Ids found in sync are remembered (bounded LRU) until the flags change, so one
assessment costs one check per flag change. When the store cannot be asked (it is down: the usual
reason for a rollback) the call is served by legacy anyway, and counted (``sync_check_failures``):
blocking legacy while the store is down would turn a rollback into an outage.

Shadow comparison (flag ``enable_shadow_comparison``, read per call): every call served by one side
is observed on the other by a ``ShadowObserver`` in the background (``migration/_shadow.py``); the
caller's latency does not include it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol, TypeVar

from assessment_store.core import (
    JSON,
    Assessment,
    BackendError,
    Histogram,
    MetricFamily,
    MetricsSource,
    State,
    StoreUsageError,
    counter,
    counter_by,
    metrics_registry,
    new_id,
)

from ._flags import MigrationFlags, store_share
from ._buckets import route_to_store
from ._shadow import ShadowObserver

__all__ = [
    "CallObserver", "FlagSource", "LegacyBackend", "LegacyNotSynced", "MigrationRouter", "RouterStats", "Side",
    "StoreNotSynced",
    "StoreBackend",
]

log = logging.getLogger("assessment_store.migration.router")

T = TypeVar("T")


class Side(str, enum.Enum):
    STORE = "store"
    LEGACY = "legacy"

    @property
    def other(self) -> Side:
        return Side.LEGACY if self is Side.STORE else Side.STORE


class LegacyNotSynced(BackendError):
    """Legacy would serve an assessment before it holds the store's changes to it (sync before serve).

    ``.assessment_id``, ``.store_version`` (the last store-written version), ``.legacy_version`` (the
    last one legacy has applied), ``.timeout_s``. Retriable: the reverse sync is behind, or not running.
    """

    def __init__(self, assessment_id: str, store_version: int, legacy_version: int, timeout_s: float) -> None:
        self.assessment_id = assessment_id
        self.store_version = store_version
        self.legacy_version = legacy_version
        self.timeout_s = timeout_s
        super().__init__(
            f"assessment {assessment_id!r} moved to legacy, but legacy has its store changes up to version "
            f"{legacy_version} of {store_version} after {timeout_s:g} s: is the reverse sync running "
            "(`assessment-store bridge reverse-sync`) and the legacy service importing its topic?")


class StoreNotSynced(BackendError):
    """The store would serve an assessment before it holds a change this router made on legacy
    (sync before serve, the other way). ``.assessment_id``, ``.timeout_s``. Retriable: the bridge is
    behind, or not running; the next call is served by the store without waiting again."""

    def __init__(self, assessment_id: str, timeout_s: float) -> None:
        self.assessment_id = assessment_id
        self.timeout_s = timeout_s
        super().__init__(
            f"assessment {assessment_id!r} moved to the store, but the store lacks the change legacy made to it "
            f"through this router after {timeout_s:g} s: is the legacy bridge running (`assessment-store bridge run`)?")


class CallObserver(Protocol):
    """Reads a router's counters (opt-in; ``ObservationPublisher`` in ``migration/_observations.py``).

    Attached once, when the router is built, and never called on the call path: it reads
    ``RouterStats`` (which the router keeps anyway) when it needs figures, so observing costs a
    routed call nothing."""

    def attach(self, stats: RouterStats) -> None: ...


class FlagSource(Protocol):
    """Where the router reads the flags: ``FlagStore`` in production."""

    def current(self) -> MigrationFlags: ...


class StoreBackend(Protocol):
    """The part of ``AssessmentStore`` the router uses (``AssessmentStore`` satisfies it)."""

    async def create_assessment(self, request: JSON, *, assessment_id: str | None = None,
                                command_id: str | None = None, correlation_id: str | None = None,
                                processing_timeout_ms: int | None = None, max_retries: int | None = None) -> str: ...

    async def start_assessment(self, assessment_id: str, *, worker: str | None = None,
                               expected_version: int | None = None, command_id: str | None = None) -> Assessment: ...

    async def update_progress(self, assessment_id: str, progress: int, message: str | None = None, *,
                              expected_version: int | None = None, command_id: str | None = None) -> Assessment: ...

    async def complete_assessment(self, assessment_id: str, result: JSON, *, duration_ms: int | None = None,
                                  expected_version: int | None = None, command_id: str | None = None) -> Assessment: ...

    async def fail_assessment(self, assessment_id: str, error: str, *, retryable: bool = False,
                              expected_version: int | None = None, command_id: str | None = None) -> Assessment: ...

    async def cancel_assessment(self, assessment_id: str, reason: str | None = None, *,
                                expected_version: int | None = None, command_id: str | None = None) -> Assessment: ...

    async def get_state(self, assessment_id: str) -> Assessment: ...

    async def find_state(self, assessment_id: str) -> Assessment | None: ...

    async def get_history(self, assessment_id: str) -> list[dict[str, JSON]]: ...

    async def wait_for_completion(self, assessment_id: str, timeout: float = 30.0) -> Assessment: ...


if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from assessment_store.client import AssessmentStore

    def _store_is_a_backend(store: AssessmentStore) -> StoreBackend:
        return store  # mypy proves AssessmentStore satisfies the protocol; never called


class LegacyBackend(Protocol):
    """The legacy EventEmitter service, as the router calls it (its event service).

    An adapter over the real legacy service implements it; ``InMemoryLegacyBackend`` (tests only)
    does for the router's own tests. States come back as ``Assessment`` (legacy statuses converted).
    """

    async def create_assessment(self, request: JSON, *, assessment_id: str) -> str: ...

    async def start_assessment(self, assessment_id: str) -> Assessment: ...

    async def update_progress(self, assessment_id: str, progress: int, message: str | None = None) -> Assessment: ...

    async def complete_assessment(self, assessment_id: str, result: JSON, *,
                                  duration_ms: int | None = None) -> Assessment: ...

    async def fail_assessment(self, assessment_id: str, error: str) -> Assessment: ...

    async def cancel_assessment(self, assessment_id: str) -> Assessment: ...

    async def get_state(self, assessment_id: str) -> Assessment: ...

    async def find_state(self, assessment_id: str) -> Assessment | None: ...

    async def synced_version(self, assessment_id: str) -> int:
        """The store version of the last reverse-synced change legacy has applied (0: none, or unknown)."""
        ...

    async def wait_for_completion(self, assessment_id: str, timeout: float = 30.0) -> Assessment: ...


@dataclass(slots=True)
class RouterStats:
    """Counters per side (keys ``"store"`` / ``"legacy"``).

    ``calls``: calls routed to a side (a fallback counts one store call and one legacy call);
    ``errors``: calls a side failed with a backend error; ``refused``: calls a side answered with a
    ``StoreUsageError``; ``fallbacks``: store calls retried on legacy. Sync before serve:
    ``sync_checks`` (assessments checked), ``sync_waits`` (checks that had to wait for legacy),
    ``sync_timeouts`` (``LegacyNotSynced`` raised), ``sync_check_failures`` (the store could not be
    asked; legacy served anyway).
    """

    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    fallbacks: int = 0
    by_operation: Counter[tuple[str, str]] = field(default_factory=Counter)
    sync_checks: int = 0
    sync_waits: int = 0
    sync_timeouts: int = 0
    sync_check_failures: int = 0
    by_outcome: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """(backend, operation, outcome) -> calls; outcome ``ok``, ``refused`` (a ``StoreUsageError``) or ``error``"""
    latency: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    """(backend, operation) -> seconds per call; fed while the flag ``enable_metrics`` is on, and always
    when an observer is attached (the rollout's latency gates read it)"""
    failures: int = 0
    """store-routed calls whose caller got a backend error (no fallback, or the fallback failed too)"""
    store_sync_waits: int = 0
    """store-routed calls that waited for the bridge to bring a change this router made on legacy"""
    store_sync_timeouts: int = 0
    """``StoreNotSynced`` raised"""
    rollbacks: int = 0
    """calls that found the flags sending fewer routing keys to the store than at the previous call"""

    def metric_families(self) -> list[MetricFamily]:
        """The Prometheus view of these counters (read at each scrape; docs/monitoring.md, "Metrics")."""
        p = "assessment_store_router_"
        return [
            counter_by(p + "calls_total", "Calls routed, by backend, operation and outcome",
                       ["backend", "operation", "outcome"], self.by_outcome),
            MetricFamily(p + "call_seconds", "Time of a routed call (while the flag enableMetrics is on)",
                         "histogram", ("backend", "operation"), histograms=tuple(sorted(self.latency.items()))),
            counter(p + "fallbacks_total", "Store calls retried on legacy", self.fallbacks),
            counter(p + "failures_total", "Store-routed calls whose caller got a backend error", self.failures),
            counter(p + "rollbacks_total", "Flag-driven switches of routing keys back to legacy, as seen by calls",
                    self.rollbacks),
            counter_by(p + "sync_checks_total", "Sync-before-serve checks, by result", ["result"],
                       {"in_sync": self.sync_checks - self.sync_waits - self.sync_check_failures,
                        "waited": self.sync_waits, "check_failed": self.sync_check_failures}),
            counter(p + "sync_timeouts_total", "LegacyNotSynced raised", self.sync_timeouts),
            counter(p + "store_sync_waits_total", "Store calls that waited for the bridge to bring a legacy change",
                    self.store_sync_waits),
            counter(p + "store_sync_timeouts_total", "StoreNotSynced raised", self.store_sync_timeouts),
        ]

    def to_json(self) -> dict[str, JSON]:
        return {"calls": dict(self.calls), "errors": dict(self.errors), "refused": dict(self.refused),
                "fallbacks": self.fallbacks, "failures": self.failures,
                "byOperation": {f"{op}:{side}": n for (op, side), n in sorted(self.by_operation.items())},
                "syncChecks": self.sync_checks, "syncWaits": self.sync_waits, "syncTimeouts": self.sync_timeouts,
                "syncCheckFailures": self.sync_check_failures, "storeSyncWaits": self.store_sync_waits,
                "storeSyncTimeouts": self.store_sync_timeouts}


_WRITES = frozenset({"start", "progress", "complete", "fail", "cancel"})
"""The routed operations that change an assessment (create is routed apart and pinned)."""


def _same_content(a: Assessment, b: Assessment) -> bool:
    return (a.state, a.progress, a.message, a.result_data, a.error_message) == (
        b.state, b.progress, b.message, b.result_data, b.error_message)


K = TypeVar("K")
V = TypeVar("V")


def _remember(lru: OrderedDict[K, V], key: K, value: V, capacity: int) -> None:
    """Put ``key`` as the most recently used entry; evict the least recently used beyond ``capacity``."""
    lru[key] = value
    lru.move_to_end(key)
    while len(lru) > capacity:
        lru.popitem(last=False)


class MigrationRouter:
    """Routes every assessment operation to the store or to legacy, sticky per assessment."""

    def __init__(self, store: StoreBackend, legacy: LegacyBackend, flags: FlagSource, *,
                 pinned_capacity: int = 100_000, sync_before_serve: bool = True, sync_timeout_s: float = 10.0,
                 shadow: ShadowObserver | None = None, observer: CallObserver | None = None) -> None:
        self.store = store
        self.legacy = legacy
        self.flags = flags
        self.stats = RouterStats()
        self.sync_before_serve = sync_before_serve
        self.sync_timeout_s = sync_timeout_s
        # Observations of the other side; only used while the flag enable_shadow_comparison is on.
        self.shadow = shadow
        # Reads self.stats for the gated rollout (``migrate rollout``); None: not observed.
        self.observer = observer
        if observer is not None:
            observer.attach(self.stats)
        # Ids whose legacy copy was found in sync, valid for the flags object they were checked under:
        # a flag change (a new MigrationFlags) may move more assessments, so the set starts over.
        self._synced: OrderedDict[str, None] = OrderedDict()
        self._synced_under: MigrationFlags | None = None
        # Assessments a fallback created on legacy although their key routes to the store: later calls
        # from this process go to legacy too, or they would not find them (bounded, LRU). Other
        # instances learn them through the legacy tap and the bridge, which write them into the store.
        self._pinned: OrderedDict[str, Side] = OrderedDict()
        # The latest answer of a write this router made on legacy, per assessment, until the store is
        # seen to hold it (bounded, LRU): see _ensure_store_has.
        self._legacy_writes: OrderedDict[str, Assessment] = OrderedDict()
        self._pinned_capacity = pinned_capacity
        # The flags of the previous call, to count rollbacks (a smaller store share) as calls see them.
        self._flags_seen: MigrationFlags | None = None

    # --- the decision ---------------------------------------------------------------------------

    def side_for(self, routing_key: str, flags: MigrationFlags | None = None) -> Side:
        """Which side serves ``routing_key`` under ``flags`` (default: the current flags). Pure."""
        flags = flags or self.flags.current()
        if not flags.enable_assessment_store:
            return Side.LEGACY
        if not flags.enable_dual_mode:
            return Side.STORE
        return Side.STORE if route_to_store(routing_key, flags.migration_percentage, flags.routing_salt) else Side.LEGACY

    def _side(self, assessment_id: str, routing_key: str | None) -> Side:
        pinned = self._pinned.get(assessment_id)
        if pinned is not None:
            self._pinned.move_to_end(assessment_id)
            return pinned
        return self.side_for(routing_key if routing_key is not None else assessment_id)

    def _pin(self, assessment_id: str, side: Side) -> None:
        _remember(self._pinned, assessment_id, side, self._pinned_capacity)

    async def _call(self, op: str, side: Side, on_store: Callable[[], Awaitable[T]],
                    on_legacy: Callable[[], Awaitable[T]], *, assessment_id: str | None = None) -> tuple[T, Side]:
        """Run the call on ``side``; on a store backend error with fallback on, run it on legacy.

        ``assessment_id`` (every call but create) enables sync before serve on the legacy path.
        """
        if side is Side.LEGACY:
            if assessment_id is not None:
                await self._ensure_synced(assessment_id)
            return await self._counted(op, Side.LEGACY, on_legacy), Side.LEGACY
        try:
            return await self._counted(op, Side.STORE, on_store), Side.STORE
        except BackendError as e:
            # Read the flag at failure time: an operator switching fallback off takes effect at once.
            if not self.flags.current().enable_legacy_fallback:
                self._observe_failure()
                raise
            self.stats.fallbacks += 1
            log.warning("router: %s on the store failed (%s); falling back to legacy", op, e)
            try:
                return await self._counted(op, Side.LEGACY, on_legacy), Side.LEGACY
            except BackendError:
                self._observe_failure()
                raise

    def _observe_failure(self) -> None:
        self.stats.failures += 1

    async def _ensure_synced(self, assessment_id: str) -> None:
        """Sync before serve: return once legacy holds every store-written change of the assessment."""
        if not self.sync_before_serve:
            return
        flags = self.flags.current()
        if flags is not self._synced_under:
            self._synced.clear()
            self._synced_under = flags
        if assessment_id in self._synced:
            self._synced.move_to_end(assessment_id)
            return
        self.stats.sync_checks += 1
        try:
            history = await self.store.get_history(assessment_id)
        except BackendError as e:
            self.stats.sync_check_failures += 1
            log.warning("router: cannot ask the store whether %r is synced to legacy (%s); legacy serves it",
                        assessment_id, e)
            return
        target = max((int(h["version"]) for h in history
                      if h.get("source") == "store"), default=0)
        if target > 0:
            seen = 0

            async def legacy_has_it() -> bool:
                nonlocal seen
                seen = await self.legacy.synced_version(assessment_id)
                return seen >= target

            def waiting() -> None:
                self.stats.sync_waits += 1

            if not await self._poll(legacy_has_it, waiting):
                self.stats.sync_timeouts += 1
                raise LegacyNotSynced(assessment_id, target, seen, self.sync_timeout_s)
        _remember(self._synced, assessment_id, None, self._pinned_capacity)

    async def _poll(self, ready: Callable[[], Awaitable[bool]], waiting: Callable[[], None]) -> bool:
        """Ask ``ready`` until it says yes, at most ``sync_timeout_s``: True if it did in time.
        ``waiting`` is called once, when the first answer is no. Polling with backoff (10 ms doubling
        to 200 ms): the reverse sync and the bridge normally deliver within milliseconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.sync_timeout_s
        delay, waited = 0.01, False
        while not await ready():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            if not waited:
                waited = True
                waiting()
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.2)
        return True

    def _shadow(self, op: str, assessment_id: str, served: Side, answer: Assessment | None, started: float) -> None:
        """Schedule the observation of this call on the other side (returns at once)."""
        if self.shadow is None or answer is None or not self.flags.current().enable_shadow_comparison:
            return
        primary_ms = (time.perf_counter() - started) * 1000
        other = served.other
        read = self.store.find_state if other is Side.STORE else self.legacy.find_state
        self.shadow.observe(op, assessment_id, served.value, other.value, answer, primary_ms,
                            lambda: read(assessment_id))

    async def _routed(self, op: str, assessment_id: str, routing_key: str | None,
                      on_store: Callable[[], Awaitable[Assessment]],
                      on_legacy: Callable[[], Awaitable[Assessment]]) -> Assessment:
        started = time.perf_counter()
        side = self._side(assessment_id, routing_key)
        if side is Side.STORE:
            await self._ensure_store_has(assessment_id)
        state, served = await self._call(op, side, on_store, on_legacy, assessment_id=assessment_id)
        if op in _WRITES and self.sync_before_serve:
            if served is Side.LEGACY:
                _remember(self._legacy_writes, assessment_id, state, self._pinned_capacity)
            else:
                self._legacy_writes.pop(assessment_id, None)  # the store's write is the newest now
        self._shadow(op, assessment_id, served, state, started)
        return state

    async def _ensure_store_has(self, assessment_id: str) -> None:
        """Sync before serve, the other way: before the store serves an assessment this router last
        wrote on legacy (served there by the flags, or by the fallback), wait until the legacy bridge
        has brought that write into the store. Without it, the store would apply the new call first and
        the bridge's older change after it, or refuse it (a progress after a completion): the two sides
        would differ for good. Only this router's own writes are known here; writes by other instances
        rely on the bridge's lag being shorter than the time between two calls on one assessment."""
        want = self._legacy_writes.get(assessment_id)
        if want is None:
            return

        async def store_has_it() -> bool:
            try:
                got = await self.store.find_state(assessment_id)
            except BackendError:
                return True  # the store cannot be asked: the call will fail over like any other
            if got is not None and (got.updated_at >= want.updated_at or _same_content(got, want)):
                self._legacy_writes.pop(assessment_id, None)
                return True
            return False

        def waiting() -> None:
            self.stats.store_sync_waits += 1

        if not await self._poll(store_has_it, waiting):
            # Raised once: the next call is served without waiting (a stuck bridge must not block
            # the assessment for good; its lag is what to fix, and it is counted).
            self._legacy_writes.pop(assessment_id, None)
            self.stats.store_sync_timeouts += 1
            raise StoreNotSynced(assessment_id, self.sync_timeout_s)

    def metrics_registry(self) -> CollectorRegistry:
        """A Prometheus registry of its own with this router's counters, its shadow observer's and
        (when they are a ``FlagStore``'s) its flags' (docs/monitoring.md, "Metrics")."""
        sources: list[MetricsSource] = [self.stats]
        if self.shadow is not None:
            sources.append(self.shadow.stats)
        flag_stats = getattr(self.flags, "stats", None)
        if hasattr(flag_stats, "metric_families"):
            sources.append(flag_stats)  # type: ignore[arg-type]
        return metrics_registry(*sources)

    async def _counted(self, op: str, side: Side, call: Callable[[], Awaitable[T]]) -> T:
        stats = self.stats
        stats.calls[side.value] += 1
        stats.by_operation[(op, side.value)] += 1
        flags = self.flags.current()
        if flags is not self._flags_seen:
            if self._flags_seen is not None and store_share(flags) < store_share(self._flags_seen):
                stats.rollbacks += 1
            self._flags_seen = flags
        started = time.perf_counter()
        outcome = "other"  # a timeout or a cancellation: neither an answer nor a backend error
        try:
            result = await call()
            outcome = "ok"
            return result
        except StoreUsageError:
            outcome = "refused"
            stats.refused[side.value] += 1
            raise
        except BackendError:
            outcome = "error"
            stats.errors[side.value] += 1
            raise
        finally:
            elapsed = time.perf_counter() - started
            stats.by_outcome[(side.value, op, outcome)] += 1
            # The flag enableMetrics governs the latency histograms (the counters are always kept);
            # an attached observer needs them whatever the flag says: the rollout gates on latency.
            if flags.enable_metrics or self.observer is not None:
                key = (side.value, op)
                h = stats.latency.get(key)
                if h is None:
                    h = stats.latency[key] = Histogram()
                h.observe(elapsed)

    # --- the operations ---------------------------------------------------------------------------

    async def create_assessment(self, request: JSON, *, assessment_id: str | None = None,
                                routing_key: str | None = None) -> str:
        """Create on the side the id (or ``routing_key``) routes to; returns the id."""
        # The id is fixed before routing: both sides get the same id, and the side chosen here is
        # the side every later call for this id is routed to.
        aid = assessment_id or new_id()
        side = self._side(aid, routing_key)
        started = time.perf_counter()
        created, served = await self._call(
            "create", side,
            lambda: self.store.create_assessment(request, assessment_id=aid),
            lambda: self.legacy.create_assessment(request, assessment_id=aid),
        )
        if served is not side:
            self._pin(aid, served)
        if self.shadow is not None and self.flags.current().enable_shadow_comparison:
            # A create answers an id, not a state: the state it stands for is a new PENDING one.
            now = datetime.now(UTC)
            self._shadow("create", aid, served, Assessment(aid, State.PENDING, 1, 0, None, now, now, request), started)
        return created

    async def start_assessment(self, assessment_id: str, *, routing_key: str | None = None) -> Assessment:
        return await self._routed("start", assessment_id, routing_key,
                                  lambda: self.store.start_assessment(assessment_id),
                                  lambda: self.legacy.start_assessment(assessment_id))

    async def update_progress(self, assessment_id: str, progress: int, message: str | None = None, *,
                              routing_key: str | None = None) -> Assessment:
        return await self._routed("progress", assessment_id, routing_key,
                                  lambda: self.store.update_progress(assessment_id, progress, message),
                                  lambda: self.legacy.update_progress(assessment_id, progress, message))

    async def complete_assessment(self, assessment_id: str, result: JSON, *, duration_ms: int | None = None,
                                  routing_key: str | None = None) -> Assessment:
        return await self._routed("complete", assessment_id, routing_key,
                                  lambda: self.store.complete_assessment(assessment_id, result, duration_ms=duration_ms),
                                  lambda: self.legacy.complete_assessment(assessment_id, result, duration_ms=duration_ms))

    async def fail_assessment(self, assessment_id: str, error: str, *, routing_key: str | None = None) -> Assessment:
        return await self._routed("fail", assessment_id, routing_key,
                                  lambda: self.store.fail_assessment(assessment_id, error),
                                  lambda: self.legacy.fail_assessment(assessment_id, error))

    async def cancel_assessment(self, assessment_id: str, *, routing_key: str | None = None) -> Assessment:
        return await self._routed("cancel", assessment_id, routing_key,
                                  lambda: self.store.cancel_assessment(assessment_id),
                                  lambda: self.legacy.cancel_assessment(assessment_id))

    async def get_state(self, assessment_id: str, *, routing_key: str | None = None) -> Assessment:
        return await self._routed("get", assessment_id, routing_key,
                                  lambda: self.store.get_state(assessment_id),
                                  lambda: self.legacy.get_state(assessment_id))

    async def wait_for_completion(self, assessment_id: str, timeout: float = 30.0, *,
                                  routing_key: str | None = None) -> Assessment:
        return await self._routed("wait", assessment_id, routing_key,
                                  lambda: self.store.wait_for_completion(assessment_id, timeout),
                                  lambda: self.legacy.wait_for_completion(assessment_id, timeout))
