"""Shadow comparison (in the spirit of GitHub's Scientist): a call served by one side is observed on
the other, and the two outcomes are compared.

Scientist runs the candidate code path on every call. Here that would be wrong for writes: running a
``complete`` on both sides would apply it twice, because each side already receives the other's
writes through the log (legacy -> tap -> bridge -> store, store -> reverse sync -> legacy). So the
shadow of a call is an *observation*: after the primary side answered the caller, a background task
reads the same assessment on the other side until that side has caught up with the answer, then
compares the compared fields (``state``, ``progress``, ``result``, ``duration``, ``error``).

The caller never waits for it: ``ShadowObserver.observe`` schedules a task and returns at once; the
tasks are bounded (``max_in_flight``; beyond it an observation is skipped and counted, never queued
behind the caller). What an observation concludes:

=============  ====================================================================================
matched        the shadow reached the primary's step and every compared field is equal
mismatch       same step (or both finished) but a compared field differs: counted, and kept with
               both values in ``public.shadow_mismatches``
missing        the shadow never reached the primary's step within ``timeout_s`` (or does not know
               the assessment): counted and kept, with the shadow's last value
inconclusive   the shadow had already moved past the primary's step (a later call overtook the
               observation); counted, nothing to compare
shadow-error   reading the shadow side failed: counted and kept with the error
=============  ====================================================================================

"Step" is the state's place in the lifecycle (PENDING < PROCESSING < finished) and, before the
end, the progress: a shadow that is behind is read again (first read after ``first_read_after_s`` of
the shadow side, then backoff doubling up to ``max_backoff_s``) until it catches up or the timeout ends; one that is
ahead cannot be compared any more.

The observer shares the caller's event loop and CPU, so its own work is bounded, not just deferred:
per shadow side at most ``max_concurrent_reads`` reads run at once (store 32: an indexed PostgreSQL
query; legacy 4: an HTTP call that costs the legacy service and this process CPU the callers share);
the rest of the observations wait their turn, in the background; reads back off quickly. ``bench/shadow.py`` measures what is
left of the cost on the callers' latency.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg

from assessment_store.core import (
    JSON,
    Assessment,
    AssessmentStoreError,
    AsyncLifecycle,
    MetricFamily,
    Settings,
    State,
    counter,
    counter_by,
    gauge,
)
from assessment_store.projections import create_pool, translate_db_errors

__all__ = [
    "COMPARED_FIELDS", "MismatchLog", "MismatchSink", "ShadowMismatch", "ShadowObserver", "ShadowStats", "Verdict",
    "compare", "observed_value",
]

log = logging.getLogger("assessment_store.migration.shadow")

COMPARED_FIELDS = ("state", "progress", "result", "duration", "error")
_RANK = {State.PENDING: 0, State.PROCESSING: 1}


class Verdict(str, enum.Enum):
    MATCHED = "matched"
    MISMATCH = "mismatch"
    BEHIND = "behind"
    AHEAD = "ahead"


def observed_value(a: Assessment) -> dict[str, JSON]:
    """The compared fields of an assessment, as stored with a mismatch."""
    return {"state": a.state.value, "progress": a.progress, "result": a.result_data, "duration": a.duration,
            "error": a.error_message, "version": a.version}


def _rank(s: State) -> int:
    return _RANK.get(s, 2)


def compare(primary: Assessment, shadow: Assessment | None) -> tuple[Verdict, tuple[str, ...]]:
    """Pure: where ``shadow`` stands against ``primary``, and the compared fields that differ."""
    if shadow is None:
        return Verdict.BEHIND, ("state",)
    p, s = observed_value(primary), observed_value(shadow)
    diff = tuple(f for f in COMPARED_FIELDS if p[f] != s[f])
    if not diff:
        return Verdict.MATCHED, ()
    rp, rs = _rank(primary.state), _rank(shadow.state)
    if rs < rp:
        return Verdict.BEHIND, diff
    if rs > rp:
        return Verdict.AHEAD, diff
    if rp == 2:
        # Both finished (completed, failed or cancelled): nothing will change any more.
        return Verdict.MISMATCH, diff
    if p["progress"] != s["progress"]:
        # Same unfinished state: a lifecycle's progress normally grows, so a lower one is taken as
        # still behind (read again), a higher one as overtaken (inconclusive).
        return (Verdict.BEHIND if shadow.progress < primary.progress else Verdict.AHEAD), diff
    return Verdict.MISMATCH, diff


@dataclass(frozen=True, slots=True)
class ShadowMismatch:
    kind: str  # mismatch | missing | shadow-error
    operation: str
    assessment_id: str
    primary_side: str
    shadow_side: str
    differences: tuple[str, ...]
    primary_value: dict[str, JSON]
    shadow_value: dict[str, JSON] | None
    reason: str
    primary_ms: float
    observed_ms: float


class MismatchSink(Protocol):
    async def record(self, mismatch: ShadowMismatch) -> None: ...


@dataclass(slots=True)
class ShadowStats:
    """``scheduled == matched + mismatched + missing + inconclusive + shadow_errors + in_flight``."""

    scheduled: int = 0
    matched: int = 0
    mismatched: int = 0
    missing: int = 0
    inconclusive: int = 0
    shadow_errors: int = 0
    skipped_capacity: int = 0
    skipped_sampling: int = 0
    sink_failures: int = 0
    in_flight: int = 0
    by_field: dict[str, int] = field(default_factory=dict)
    by_operation: dict[str, dict[str, int]] = field(default_factory=dict)
    """operation -> verdict (matched, mismatch, missing, inconclusive, shadow-error) -> count."""
    max_observed_ms: float = 0.0

    def count(self, operation: str, verdict: str) -> None:
        per = self.by_operation.setdefault(operation, {})
        per[verdict] = per.get(verdict, 0) + 1

    def metric_families(self) -> list[MetricFamily]:
        """The Prometheus view of these counters (read at each scrape; docs/monitoring.md, "Metrics")."""
        p = "assessment_store_shadow_"
        verdicts = {(op, v): n for op, per in self.by_operation.items() for v, n in per.items()}
        return [
            counter(p + "scheduled_total", "Shadow observations scheduled", self.scheduled),
            counter_by(p + "verdicts_total", "Shadow observations by operation and verdict",
                       ["operation", "verdict"], verdicts),
            counter_by(p + "skipped_total", "Shadow observations not made, by reason", ["reason"],
                       {"capacity": self.skipped_capacity, "sampling": self.skipped_sampling}),
            counter_by(p + "mismatched_fields_total", "Fields found different, by field", ["field"], self.by_field),
            counter(p + "sink_failures_total", "Mismatches the sink failed to record", self.sink_failures),
            gauge(p + "in_flight", "Shadow observations under way", self.in_flight),
        ]

    def to_json(self) -> dict[str, JSON]:
        return {"scheduled": self.scheduled, "matched": self.matched, "mismatched": self.mismatched,
                "missing": self.missing, "inconclusive": self.inconclusive, "shadowErrors": self.shadow_errors,
                "skippedCapacity": self.skipped_capacity, "skippedSampling": self.skipped_sampling,
                "sinkFailures": self.sink_failures,
                "inFlight": self.in_flight, "byField": dict(self.by_field),
                "byOperation": {op: dict(v) for op, v in self.by_operation.items()},
                "maxObservedMs": round(self.max_observed_ms, 1)}


class ShadowObserver:
    """Runs observations in the background; ``observe`` never blocks the caller."""

    def __init__(self, sink: MismatchSink, *, timeout_s: float = 10.0, max_in_flight: int = 1000,
                 max_concurrent_reads: Mapping[str, int] | None = None,
                 first_read_after_s: Mapping[str, float] | None = None,
                 max_backoff_s: float = 1.0,
                 sample_percentage: float = 100.0) -> None:
        # Per shadow side. A store read is one indexed PostgreSQL query from this process: read early,
        # and a back-to-back next call rarely overtakes the observation. A legacy read is an HTTP call
        # that costs the legacy service and this process CPU the callers share: wait a little first.
        first = {"store": 0.01, "legacy": 0.05, **(first_read_after_s or {})}
        slots = {"store": 32, "legacy": 4, **(max_concurrent_reads or {})}
        if timeout_s <= 0 or max_in_flight < 1 or min(slots.values()) < 1 or min(first.values()) < 0 \
                or max_backoff_s <= 0 or not 0 <= sample_percentage <= 100:
            raise ValueError("timeout_s and max_backoff_s must be > 0, max_in_flight and max_concurrent_reads >= 1, "
                             "first_read_after_s >= 0, sample_percentage in [0, 100]")
        self.sample_percentage = sample_percentage
        self.sink = sink
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.first_read_after_s = first
        self.max_backoff_s = max_backoff_s
        self._reads = {side: asyncio.Semaphore(n) for side, n in slots.items()}
        self.stats = ShadowStats()
        self._tasks: set[asyncio.Task[None]] = set()

    def observe(self, operation: str, assessment_id: str, primary_side: str, shadow_side: str,
                primary: Assessment, primary_ms: float,
                read_shadow: Callable[[], Awaitable[Assessment | None]]) -> None:
        """Schedule one observation (returns at once; skipped and counted when too many are running)."""
        # Each observation costs at least one read of the other side, on the caller's CPUs: sampling
        # bounds that cost on a busy machine (bench/shadow.py shows it). Not sticky on purpose: every
        # assessment gets observed sometimes.
        if self.sample_percentage < 100 and random.random() * 100 >= self.sample_percentage:
            self.stats.skipped_sampling += 1
            return
        if len(self._tasks) >= self.max_in_flight:
            self.stats.skipped_capacity += 1
            return
        self.stats.scheduled += 1
        self.stats.in_flight += 1
        task = asyncio.get_running_loop().create_task(
            self._observe(operation, assessment_id, primary_side, shadow_side, primary, primary_ms, read_shadow),
            name=f"shadow:{operation}:{assessment_id}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.stats.in_flight -= 1
        if not task.cancelled() and task.exception() is not None:
            # _observe catches what it expects; anything else is a bug, logged with its traceback.
            log.error("shadow observation failed", exc_info=task.exception())

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Wait until every scheduled observation has concluded (``TimeoutError`` after ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            while self._tasks:
                await asyncio.wait(set(self._tasks))

    async def aclose(self) -> None:
        """Cancel what is still running (counted as nothing: in_flight drops to 0)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _observe(self, operation: str, assessment_id: str, primary_side: str, shadow_side: str,
                       primary: Assessment, primary_ms: float,
                       read_shadow: Callable[[], Awaitable[Assessment | None]]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.timeout_s
        # The other side almost never has the change within a few ms (it travels through Kafka): the
        # first read waits a little, which saves a read per observation.
        delay = self.first_read_after_s.get(shadow_side, 0.05)
        shadow: Assessment | None = None

        def mismatch(kind: str, diff: tuple[str, ...], reason: str) -> ShadowMismatch:
            return ShadowMismatch(kind, operation, assessment_id, primary_side, shadow_side, diff,
                                  observed_value(primary), None if shadow is None else observed_value(shadow),
                                  reason, primary_ms, (loop.time() - started) * 1000)

        while True:
            if delay > 0:
                await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            try:
                queued = loop.time()
                async with self._reads.get(shadow_side) or self._reads["legacy"]:
                    # Time spent waiting for our own read slot is not the other side's lag: it does
                    # not count against the timeout (overload shows as in_flight, then skipped_capacity).
                    deadline += loop.time() - queued
                    shadow = await read_shadow()
            except AssessmentStoreError as e:
                self.stats.shadow_errors += 1
                self.stats.count(operation, "shadow-error")
                await self._keep(mismatch("shadow-error", (), f"reading the {shadow_side} side failed: {e}"))
                return
            verdict, diff = compare(primary, shadow)
            if verdict is Verdict.MATCHED:
                self.stats.matched += 1
                self.stats.count(operation, "matched")
                self._took(loop.time() - started)
                return
            if verdict is Verdict.AHEAD:
                self.stats.inconclusive += 1
                self.stats.count(operation, "inconclusive")
                self._took(loop.time() - started)
                return
            if verdict is Verdict.MISMATCH:
                self.stats.mismatched += 1
                self.stats.count(operation, "mismatch")
                self._count_fields(diff)
                await self._keep(mismatch("mismatch", diff, "the sides differ in " + ", ".join(diff)))
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.stats.missing += 1
                self.stats.count(operation, "missing")
                self._count_fields(diff)
                what = "does not know the assessment" if shadow is None else \
                    f"stayed at {shadow.state.value} {shadow.progress} %"
                await self._keep(mismatch("missing", diff, f"the {shadow_side} side {what} for {self.timeout_s:g} s "
                                          f"(the {primary_side} side answered {primary.state.value} "
                                          f"{primary.progress} %)"))
                return
            delay = min(max(delay * 2, 0.01), self.max_backoff_s)

    def _took(self, seconds: float) -> None:
        self.stats.max_observed_ms = max(self.stats.max_observed_ms, seconds * 1000)

    def _count_fields(self, diff: tuple[str, ...]) -> None:
        for f in diff:
            self.stats.by_field[f] = self.stats.by_field.get(f, 0) + 1

    async def _keep(self, m: ShadowMismatch) -> None:
        self._took(m.observed_ms / 1000)
        log.warning("shadow %s: %s %s on %s: %s", m.kind, m.operation, m.assessment_id, m.primary_side, m.reason)
        try:
            await self.sink.record(m)
        except AssessmentStoreError as e:
            # Counted and logged with both values: the row is lost, the observation is not silent.
            self.stats.sink_failures += 1
            log.error("shadow mismatch not stored (%s): %r", e, m)


class MismatchLog(AsyncLifecycle):
    """``public.shadow_mismatches`` in PostgreSQL: where observations that differ are kept."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        if self._pool is None:
            self._pool = await create_pool(self.settings, min_size=1, max_size=2)

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("MismatchLog is not started: use `async with MismatchLog(settings)`")
        return self._pool

    async def record(self, m: ShadowMismatch) -> None:
        with translate_db_errors(f"keeping the shadow mismatch of {m.assessment_id!r}"):
            await self._db().execute(
                "INSERT INTO public.shadow_mismatches (kind, operation, assessment_id, primary_side, shadow_side,"
                " differences, primary_value, shadow_value, reason, primary_ms, observed_ms)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                m.kind, m.operation, m.assessment_id, m.primary_side, m.shadow_side, list(m.differences),
                m.primary_value, m.shadow_value, m.reason, m.primary_ms, m.observed_ms)

    async def latest(self, *, limit: int = 20, assessment_id: str | None = None) -> list[dict[str, JSON]]:
        """The latest mismatches, newest first, as JSON-ready dicts."""
        if not 1 <= limit <= 10_000:
            raise ValueError("limit must be between 1 and 10000")
        with translate_db_errors("reading shadow mismatches"):
            rows = await self._db().fetch(
                "SELECT id, observed_at, kind, operation, assessment_id, primary_side, shadow_side, differences,"
                " primary_value, shadow_value, reason, primary_ms, observed_ms FROM public.shadow_mismatches"
                " WHERE $1::text IS NULL OR assessment_id = $1 ORDER BY id DESC LIMIT $2", assessment_id, limit)
        return [{"id": r["id"], "observedAt": r["observed_at"].isoformat(), "kind": r["kind"],
                 "operation": r["operation"], "assessmentId": r["assessment_id"], "primarySide": r["primary_side"],
                 "shadowSide": r["shadow_side"], "differences": list(r["differences"]),
                 "primary": r["primary_value"], "shadow": r["shadow_value"], "reason": r["reason"],
                 "primaryMs": round(r["primary_ms"], 2), "observedMs": round(r["observed_ms"], 2)} for r in rows]

    async def counts(self) -> dict[str, int]:
        with translate_db_errors("counting shadow mismatches"):
            rows = await self._db().fetch("SELECT kind, count(*) AS n FROM public.shadow_mismatches GROUP BY kind")
        return {r["kind"]: r["n"] for r in rows}
