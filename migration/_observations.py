"""What every ``MigrationRouter`` instance saw, per window, on ``assessments.migration-observations``.

An ``ObservationPublisher`` is the router's opt-in ``observer``. It adds nothing to a routed call: the
router keeps its ``RouterStats`` counters and latency histograms anyway (they are its Prometheus
metrics), and once per window a background task reads them, subtracts what it read at the previous
window's close, and publishes the difference as one compact record per instance:
``WindowObservation`` (calls, errors, failures, a latency histogram, shadow comparisons). Windows are
aligned to the wall clock (``start = floor(now / w) * w``) so every instance cuts the same windows and
the controller can add them up.

A window is closed when the task wakes just after its end: calls completed in those few
milliseconds count in the window that ends, and if the event loop was held for longer than a
window the record covers all the calls since the previous close, under the earlier start. Both
only blur a boundary; no call is counted twice or lost, because each close subtracts exactly the
totals the previous close read.

The record is keyed by instance; its identity is ``(instance, window start)``. A reader folds
records into a dict under that identity, last write wins: a publisher that sends one window twice
(a retried send, a final flush at stop) changes nothing, so at-least-once delivery is enough.

Latency is a fixed-bucket histogram (``LATENCY_BUCKETS_MS``, the router's own Prometheus buckets in
milliseconds): histograms of several instances add up exactly, which a per-instance p95 does not.
The fleet p95 is the upper bound of the bucket that holds the 95th percentile: conservative, never
below the true value. Records of the earlier 20-bucket layout are read by moving each count to the
first current bucket whose bound is at least its own (also never below the true value).
"""

from __future__ import annotations

import asyncio
import json
from bisect import bisect_left
import logging
import math
import time
import uuid
from collections.abc import Iterable
from typing import Any
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from assessment_store.core import LATENCY_BUCKETS, AsyncLifecycle, Settings
from assessment_store.core import JSON
from assessment_store.streams import Principal, TopicSpec, ensure_topics, kafka_client_options, translate_kafka_errors

from ._router import RouterStats
from ._shadow import ShadowStats

__all__ = [
    "LATENCY_BUCKETS_MS", "OBSERVATIONS_TOPIC", "ObservationPublisher", "WindowObservation",
    "latency_percentile_ms", "observations_topic_spec", "p95_ms", "window_start",
]

log = logging.getLogger("assessment_store.migration.observations")

OBSERVATIONS_TOPIC = "assessments.migration-observations"

LATENCY_BUCKETS_MS: tuple[float, ...] = (*(round(b * 1000, 6) for b in LATENCY_BUCKETS), math.inf)
"""Upper bounds (inclusive) of the latency histogram's buckets, in ms: the router's Prometheus buckets
(``core.LATENCY_BUCKETS``) and +Inf. The thresholds' defaults (5 s, 10 s) are bucket bounds, so the
gate compares exactly at them."""

_PREVIOUS_BUCKETS_MS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 750, 1000, 2000, 3000, 5000, 7500, 10000, 20000, 60000, math.inf,
)
"""The layout publishers wrote before they read the router's histograms; still read (``from_json``)."""


def _from_previous_layout(counts: tuple[int, ...]) -> tuple[int, ...]:
    out = [0] * len(LATENCY_BUCKETS_MS)
    for bound, n in zip(_PREVIOUS_BUCKETS_MS, counts, strict=True):
        out[bisect_left(LATENCY_BUCKETS_MS, bound)] += n
    return tuple(out)


def observations_topic_spec(topic: str = OBSERVATIONS_TOPIC) -> TopicSpec:
    # One partition: the controller reads everything anyway, and a few records per instance per
    # window are little. Kept 7 days: a restarted controller re-reads the windows of its current
    # step (at most the soak time, 24 h by default) from here.
    return TopicSpec(topic, 1, {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000)})


def window_start(now_s: float, window_s: float) -> float:
    """The start of the wall-clock-aligned window holding ``now_s`` (same on every instance)."""
    return math.floor(now_s / window_s) * window_s


def latency_percentile_ms(buckets: Iterable[int], q: float) -> float | None:
    """The upper bound of the bucket holding the ``q`` quantile (never below the truth); ``None``
    without calls."""
    counts = list(buckets)
    total = sum(counts)
    if total == 0:
        return None
    rank = math.ceil(q * total)
    seen = 0
    for bound, n in zip(LATENCY_BUCKETS_MS, counts, strict=True):
        seen += n
        if seen >= rank:
            return bound
    return math.inf


def p95_ms(buckets: Iterable[int]) -> float | None:
    """The gates' p95: ``latency_percentile_ms(buckets, 0.95)``."""
    return latency_percentile_ms(buckets, 0.95)


@dataclass(frozen=True, slots=True)
class WindowObservation:
    """One instance's window. ``calls``/``errors``/``failures``/``latency`` are about store-routed
    calls, the rollout's subject: ``errors`` = store attempts that failed with a backend error
    (rescued by the legacy fallback or not), ``failures`` = store-routed calls whose caller got a
    backend error (no fallback, or the fallback failed too). ``legacy_calls`` is context only.
    ``shadow_compared`` = shadow observations concluded (matched, mismatched or missing),
    ``shadow_mismatched`` = mismatched or missing."""

    instance: str
    start: float
    window_s: float
    calls: int = 0
    errors: int = 0
    failures: int = 0
    latency: tuple[int, ...] = tuple(0 for _ in LATENCY_BUCKETS_MS)
    shadow_compared: int = 0
    shadow_mismatched: int = 0
    legacy_calls: int = 0

    @property
    def key(self) -> tuple[str, float]:
        return (self.instance, self.start)

    def to_json(self) -> dict[str, JSON]:
        return {"instance": self.instance, "start": self.start, "windowS": self.window_s, "calls": self.calls,
                "errors": self.errors, "failures": self.failures, "latency": list(self.latency),
                "shadowCompared": self.shadow_compared, "shadowMismatched": self.shadow_mismatched,
                "legacyCalls": self.legacy_calls}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> WindowObservation:
        latency = tuple(int(n) for n in doc["latency"])
        if len(latency) == len(_PREVIOUS_BUCKETS_MS):
            latency = _from_previous_layout(latency)
        if len(latency) != len(LATENCY_BUCKETS_MS):
            raise ValueError(f"latency histogram has {len(latency)} buckets, expected {len(LATENCY_BUCKETS_MS)}")
        return cls(
            instance=str(doc["instance"]), start=float(doc["start"]),
            window_s=float(doc["windowS"]), calls=int(doc["calls"]),
            errors=int(doc["errors"]), failures=int(doc["failures"]), latency=latency,
            shadow_compared=int(doc.get("shadowCompared", 0)),
            shadow_mismatched=int(doc.get("shadowMismatched", 0)),
            legacy_calls=int(doc.get("legacyCalls", 0)),
        )


@dataclass(frozen=True, slots=True)
class _Totals:
    """Cumulative figures of the attached routers at one moment; a window is the difference of two."""

    calls: int = 0
    errors: int = 0
    failures: int = 0
    legacy_calls: int = 0
    latency: tuple[int, ...] = tuple(0 for _ in LATENCY_BUCKETS_MS)
    shadow_compared: int = 0
    shadow_mismatched: int = 0

    @classmethod
    def read(cls, routers: Iterable[RouterStats], shadow: ShadowStats | None) -> _Totals:
        calls = errors = failures = legacy = 0
        latency = [0] * len(LATENCY_BUCKETS_MS)
        for stats in routers:
            # Calls are counted as they complete (by_outcome), like the latency beside them; a
            # timeout or cancellation ("other") is a call too, neither an answer nor an error.
            for (side, _op, outcome), n in list(stats.by_outcome.items()):
                if side == "store":
                    calls += n
                    errors += n if outcome == "error" else 0
                else:
                    legacy += n
            failures += stats.failures
            for (side, _op), h in list(stats.latency.items()):
                if side == "store":
                    for i, n in enumerate(h.counts):
                        latency[i] += n
        compared = mismatched = 0
        if shadow is not None:
            compared = shadow.matched + shadow.mismatched + shadow.missing
            mismatched = shadow.mismatched + shadow.missing
        return cls(calls, errors, failures, legacy, tuple(latency), compared, mismatched)


def _plus(base: _Totals, extra: _Totals) -> _Totals:
    """``base`` plus ``extra`` (a newly attached router's figures so far, which no window may count)."""
    return _Totals(base.calls + extra.calls, base.errors + extra.errors, base.failures + extra.failures,
                   base.legacy_calls + extra.legacy_calls,
                   tuple(a + b for a, b in zip(base.latency, extra.latency, strict=True)),
                   base.shadow_compared, base.shadow_mismatched)


class ObservationPublisher(AsyncLifecycle):
    """The router's observer: reads the attached routers' counters at each window's end and publishes
    one record per window.

    ``MigrationRouter(..., observer=publisher)`` attaches the router (several may share one
    publisher: their figures add up); ``shadow_stats`` (the router's ``ShadowObserver.stats``) adds
    the shadow comparisons concluded in each window.
    """

    def __init__(self, settings: Settings, *, window_s: float = 60.0, instance_id: str | None = None,
                 topic: str = OBSERVATIONS_TOPIC, shadow_stats: ShadowStats | None = None,
                 principal: Principal = "admin") -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.settings = settings
        self.window_s = window_s
        self.instance_id = instance_id or f"router-{uuid.uuid4().hex[:12]}"
        self.topic = topic
        self.principal: Principal = principal
        self.shadow_stats = shadow_stats
        self.published = 0
        self.publish_failures = 0
        self._routers: list[RouterStats] = []
        self._start = window_start(time.time(), window_s)
        self._base = self._totals()
        self._pending: list[WindowObservation] = []
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    def attach(self, stats: RouterStats) -> None:
        """Observe a router's counters from now on (its figures so far belong to no window)."""
        if any(s is stats for s in self._routers):
            return
        # Counting from the attachment on: the base grows by what the router already holds.
        before = _Totals.read([stats], None)
        self._routers.append(stats)
        self._base = _plus(self._base, before)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._producer is not None:
            return
        await ensure_topics(self.settings, [observations_topic_spec(self.topic)], principal=self.principal)
        producer = AIOKafkaProducer(**kafka_client_options(self.settings, self.principal), acks="all", linger_ms=0)
        with translate_kafka_errors(f"starting the observation publisher on {self.settings.kafka_bootstrap}"):
            await producer.start()
        self._producer = producer
        self._task = asyncio.create_task(self._run(), name=f"observations:{self.instance_id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                # The partial window: its counts are true for this instance (same key if re-sent).
                self._pending.append(self._close(window_start(time.time(), self.window_s) + self.window_s))
                for obs in self._pending:
                    await self._publish(producer, obs)
            except Exception:
                log.warning("observations: final flush failed", exc_info=True)
            await producer.stop()

    # --- internals ------------------------------------------------------------------------------

    def _totals(self) -> _Totals:
        return _Totals.read(self._routers, self.shadow_stats)

    def _close(self, next_start: float) -> WindowObservation:
        # Ordering: read the totals once and make them the next base in the same synchronous step
        # (no await between), so each call lands in exactly one window.
        now, base = self._totals(), self._base
        obs = WindowObservation(
            instance=self.instance_id, start=self._start, window_s=self.window_s, calls=now.calls - base.calls,
            errors=now.errors - base.errors, failures=now.failures - base.failures,
            latency=tuple(a - b for a, b in zip(now.latency, base.latency, strict=True)),
            shadow_compared=now.shadow_compared - base.shadow_compared,
            shadow_mismatched=now.shadow_mismatched - base.shadow_mismatched,
            legacy_calls=now.legacy_calls - base.legacy_calls)
        self._start, self._base = next_start, now
        return obs

    async def _publish(self, producer: AIOKafkaProducer, obs: WindowObservation) -> None:
        await producer.send_and_wait(self.topic, json.dumps(obs.to_json()).encode(), key=self.instance_id.encode())
        self.published += 1

    async def _run(self) -> None:
        producer = self._producer
        assert producer is not None
        while True:
            # Sleep to just after the current window's end, then close it: one send per window.
            end = self._start + self.window_s
            await asyncio.sleep(max(0.0, end - time.time()) + 0.005)
            now_start = window_start(time.time(), self.window_s)
            if now_start > self._start:
                self._pending.append(self._close(now_start))
            pending, self._pending = self._pending, []
            for obs in pending:
                try:
                    await self._publish(producer, obs)
                except Exception:
                    # Observations are best effort: a lost window is a thin (inconclusive) one for
                    # the controller, never a reason to disturb the calls being routed.
                    self.publish_failures += 1
                    log.warning("observations: publishing window %s failed", obs.start, exc_info=True)
