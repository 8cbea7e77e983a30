"""What every ``MigrationRouter`` instance saw, per window, on ``assessments.migration-observations``.

An ``ObservationPublisher`` is the router's opt-in ``observer``: each routed call adds to in-memory
counters of the current window (no I/O on the call path), and once per window a background task
publishes one compact record per instance: ``WindowObservation`` (calls, errors, failures, a latency
histogram, shadow comparisons). Windows are aligned to the wall clock (``start = floor(now / w) * w``)
so every instance cuts the same windows and the controller can add them up.

The record is keyed by instance; its identity is ``(instance, window start)``. A reader folds
records into a dict under that identity, last write wins: a publisher that sends one window twice
(a retried send, a final flush at stop) changes nothing, so at-least-once delivery is enough.

Latency is a fixed-bucket histogram (``LATENCY_BUCKETS_MS``): histograms of several instances add
up exactly, which a per-instance p95 does not. The fleet p95 is the upper bound of the bucket that
holds the 95th percentile: conservative, never below the true value.
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
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from assessment_store.core import AsyncLifecycle, Settings
from assessment_store.core import JSON
from assessment_store.streams import Principal, TopicSpec, ensure_topics, kafka_client_options, translate_kafka_errors

from ._shadow import ShadowStats

__all__ = [
    "LATENCY_BUCKETS_MS", "OBSERVATIONS_TOPIC", "ObservationPublisher", "WindowObservation",
    "observations_topic_spec", "p95_ms", "window_start",
]

log = logging.getLogger("assessment_store.migration.observations")

OBSERVATIONS_TOPIC = "assessments.migration-observations"

LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 750, 1000, 2000, 3000, 5000, 7500, 10000, 20000, 60000, math.inf,
)
"""Upper bounds (inclusive) of the latency histogram's buckets, in ms; the thresholds' defaults (5 s,
10 s) are bucket bounds, so the gate compares exactly at them."""


def observations_topic_spec(topic: str = OBSERVATIONS_TOPIC) -> TopicSpec:
    # One partition: the controller reads everything anyway, and a few records per instance per
    # window are little. Kept 7 days: a restarted controller re-reads the windows of its current
    # step (at most the soak time, 24 h by default) from here.
    return TopicSpec(topic, 1, {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000)})


def window_start(now_s: float, window_s: float) -> float:
    """The start of the wall-clock-aligned window holding ``now_s`` (same on every instance)."""
    return math.floor(now_s / window_s) * window_s


def p95_ms(buckets: Iterable[int]) -> float | None:
    """The upper bound of the bucket holding the 95th percentile; ``None`` without calls."""
    counts = list(buckets)
    total = sum(counts)
    if total == 0:
        return None
    rank = math.ceil(0.95 * total)
    seen = 0
    for bound, n in zip(LATENCY_BUCKETS_MS, counts, strict=True):
        seen += n
        if seen >= rank:
            return bound
    return math.inf


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


@dataclass(slots=True)
class _Window:
    start: float
    calls: int = 0
    errors: int = 0
    failures: int = 0
    legacy_calls: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_MS))


def _bucket(ms: float) -> int:
    # The first bucket whose (inclusive) upper bound is >= ms: a bisection, on every routed call.
    return min(bisect_left(LATENCY_BUCKETS_MS, ms), len(LATENCY_BUCKETS_MS) - 1)


class ObservationPublisher(AsyncLifecycle):
    """The router's observer: counts calls per window in memory and publishes one record per window.

    ``MigrationRouter(..., observer=publisher)``; ``shadow_stats`` (the router's
    ``ShadowObserver.stats``) adds the shadow comparisons concluded in each window.
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
        self._current = _Window(window_start(time.time(), window_s))
        self._current_end = self._current.start + window_s
        self._shadow_base = self._shadow_totals()
        self._pending: list[WindowObservation] = []
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    # --- the hooks the router calls (synchronous, no I/O) ---------------------------------------

    def record_call(self, side: str, seconds: float, outcome: str) -> None:
        """One attempt on ``side`` ("store" / "legacy"), ``outcome`` "ok" | "refused" | "error"."""
        w = self._window()
        if side != "store":
            w.legacy_calls += 1
            return
        w.calls += 1
        if outcome == "error":
            w.errors += 1
        w.latency[_bucket(seconds * 1000)] += 1

    def record_failure(self) -> None:
        """A store-routed call whose caller got a backend error."""
        self._window().failures += 1

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

    def _shadow_totals(self) -> tuple[int, int]:
        s = self.shadow_stats
        if s is None:
            return (0, 0)
        return (s.matched + s.mismatched + s.missing, s.mismatched + s.missing)

    def _window(self) -> _Window:
        now = time.time()
        if now < self._current_end:
            return self._current  # the common case, on every routed call: no floor, no division
        start = window_start(now, self.window_s)
        if start > self._current.start:
            # A call in a new window before the flush task ran: close the old one here (no I/O),
            # the task sends it.
            self._pending.append(self._close(start))
        return self._current

    def _close(self, next_start: float) -> WindowObservation:
        w = self._current
        compared, mismatched = self._shadow_totals()
        obs = WindowObservation(
            instance=self.instance_id, start=w.start, window_s=self.window_s, calls=w.calls, errors=w.errors,
            failures=w.failures, latency=tuple(w.latency), shadow_compared=compared - self._shadow_base[0],
            shadow_mismatched=mismatched - self._shadow_base[1], legacy_calls=w.legacy_calls)
        self._current = _Window(next_start)
        self._current_end = next_start + self.window_s
        self._shadow_base = (compared, mismatched)
        return obs

    async def _publish(self, producer: AIOKafkaProducer, obs: WindowObservation) -> None:
        await producer.send_and_wait(self.topic, json.dumps(obs.to_json()).encode(), key=self.instance_id.encode())
        self.published += 1

    async def _run(self) -> None:
        producer = self._producer
        assert producer is not None
        while True:
            # Sleep to just after the current window's end, then close it: one send per window.
            end = self._current.start + self.window_s
            await asyncio.sleep(max(0.0, end - time.time()) + 0.005)
            now_start = window_start(time.time(), self.window_s)
            if now_start > self._current.start:
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
