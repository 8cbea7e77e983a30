"""What the dashboard shows, sampled every ``dashboard_resolution_s``: the lag monitor's latest
snapshot, each store topic's end offsets (throughput, dead letters), the projection's health, the
migration's flags, shadow mismatches and reverse-sync lag, and the Prometheus figures of the
processes. Each tick appends one point to the ``History`` and hands the same point, with the
current tables, to every live subscriber (the page's SSE streams).

Every source fails alone: a broker, a database or a scrape target that does not answer leaves its
panel with the error and no figures, and the other panels go on."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from assessment_store.core import AssessmentStoreError, AsyncLifecycle, Settings
from assessment_store.migration import FlagStore, MismatchLog
from assessment_store.projections import connect, projection_health
from assessment_store.streams import kafka_client_options, translate_kafka_errors

from ._history import History
from ._model import LagSnapshot
from ._monitor import LagMonitor
from ._scrape import PromReading, PromSource, parse_scrape_urls

__all__ = ["Sampler", "Subscription", "store_topics_watched"]

log = logging.getLogger("assessment_store.monitoring.dashboard")

_QUEUE = 64
"""Points a live subscriber may fall behind before it is dropped (a client that stopped reading)."""


def store_topics_watched(s: Settings) -> tuple[str, ...]:
    return (s.commands_topic, s.events_topic, s.outcomes_topic, s.commands_topic + ".dlq", s.legacy_topic,
            s.legacy_topic + ".dlq", s.legacy_reverse_topic)


def dlq_topics(s: Settings) -> tuple[str, ...]:
    return (s.commands_topic + ".dlq", s.legacy_topic + ".dlq")


class Subscription:
    """One live client's queue of points; ``closed`` once the sampler dropped it for falling behind."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=_QUEUE)
        self.closed = False


async def _topic_offsets(settings: Settings, topics: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """topic -> (sum of log starts, sum of end offsets) over its partitions; missing topics left out.
    One short-lived consumer without a group, as the lag monitor reads (principal ``dashboard``)."""
    reader = AIOKafkaConsumer(**kafka_client_options(settings, "dashboard"), group_id=None, enable_auto_commit=False)
    with translate_kafka_errors("reading the store topics' end offsets"):
        await reader.start()
        try:
            tps: list[TopicPartition] = []
            for topic in topics:
                parts = reader.partitions_for_topic(topic)
                if parts is None:
                    await reader._client.force_metadata_update()  # the first metadata may predate the topic
                    parts = reader.partitions_for_topic(topic)
                tps.extend(TopicPartition(topic, p) for p in sorted(parts or ()))
            if not tps:
                return {}
            starts = await reader.beginning_offsets(tps)
            ends = await reader.end_offsets(tps)
        finally:
            await reader.stop()
    out: dict[str, tuple[int, int]] = {}
    for tp in tps:
        s0, e0 = out.get(tp.topic, (0, 0))
        out[tp.topic] = (s0 + starts[tp], e0 + ends[tp])
    return out


class Sampler(AsyncLifecycle):
    """Samples in the background (``start``/``stop``, or ``async with``). ``history`` holds the
    points; ``current`` the tables of the latest tick; ``subscribe()`` a live feed of points."""

    def __init__(self, settings: Settings, *, resolution_s: float | None = None, history_s: float | None = None,
                 scrape_urls: tuple[str, ...] | None = None, monitor: LagMonitor | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.resolution_s = resolution_s or settings.dashboard_resolution_s
        span = history_s or settings.dashboard_history_s
        self.history = History(max(1, math.ceil(span / self.resolution_s)))
        self.monitor = monitor or LagMonitor(settings, interval_s=min(settings.lag_poll_interval_s, self.resolution_s))
        self._own_monitor = monitor is None
        urls = scrape_urls if scrape_urls is not None else parse_scrape_urls(settings.dashboard_scrape_urls)
        self.prom = PromSource(urls)
        self._clock = clock
        self._flags: FlagStore | None = None
        self._mismatches: MismatchLog | None = None
        self._previous_ends: tuple[float, dict[str, int]] | None = None
        self._subscribers: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.current: dict[str, Any] = {"at": None, "lag": LagSnapshot(None, (), (), False, True).to_json()}

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        if self._own_monitor:
            await self.monitor.start()
        self._task = asyncio.create_task(self._run(), name="dashboard-sampler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_monitor:
            await self.monitor.stop()
        for closer in (self._flags, self._mismatches):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer.stop()
        self._flags = self._mismatches = None
        for sub in list(self._subscribers):
            self.unsubscribe(sub)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await asyncio.wait_for(self.tick(), timeout=max(5.0, 3 * self.resolution_s))
            except TimeoutError:
                log.warning("dashboard: a sample took longer than %.0f s; skipped", max(5.0, 3 * self.resolution_s))
            except Exception:  # one bad tick must not end the dashboard's history
                log.exception("dashboard: sampling failed")
            await asyncio.sleep(max(0.0, self.resolution_s - (loop.time() - started)))

    # -- live feed -----------------------------------------------------------------------------

    def subscribe(self) -> Subscription:
        sub = Subscription()
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        sub.closed = True

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _publish(self, point: dict[str, Any]) -> None:
        for sub in list(self._subscribers):
            try:
                sub.queue.put_nowait(point)
            except asyncio.QueueFull:
                # A client that stopped reading without closing: dropped, not buffered without end.
                self.unsubscribe(sub)

    # -- sampling ------------------------------------------------------------------------------

    async def tick(self) -> dict[str, Any]:
        """Take one sample now: append it to the history and publish it. Returns the point."""
        at = self._clock()
        values: dict[str, float | None] = {}
        panels: dict[str, Any] = {}
        snap = self.monitor.latest
        panels["lag"] = snap.to_json()
        self._lag_values(snap, values)
        results = await asyncio.gather(self._topics(at, values), self._projection(), self._migration(),
                                       self.prom.read(at), return_exceptions=True)
        topics, projection, migration, prom = results
        panels["topics"] = _or_error(topics)
        panels["projection"] = _or_error(projection)
        panels["migration"] = _or_error(migration)
        if isinstance(projection, dict) and "anomalies" in projection:
            values["proj:anomalies"] = float(sum(projection["anomalies"].values()))
            values["proj:quarantined"] = float(projection["quarantined"])
        if isinstance(migration, dict):
            if migration.get("mismatches") is not None:
                values["mig:mismatches"] = float(sum(migration["mismatches"].values()))
            flags = migration.get("flags")
            if isinstance(flags, dict):
                values["mig:percentage"] = float(flags.get("migration_percentage", 0.0))
        if isinstance(prom, PromReading):
            panels["prom"] = self._prom_values(prom, values)
        else:
            panels["prom"] = {"error": _describe(prom), "targets": {}}
        rev = snap.group(self.settings.reverse_sync_group)
        panels["migration"]["reverseSync"] = (
            None if rev is None else {"group": rev.group, "lag": rev.lag, "lagSeconds": rev.lag_seconds,
                                      "status": rev.status.value, "members": rev.members})
        point = {"t": round(at, 3), "values": {k: v for k, v in values.items() if v is not None and math.isfinite(v)},
                 "current": panels}
        self.history.append(at, values)
        self.current = {"at": at, **panels}
        self.ticks += 1
        self._publish(point)
        return point

    def _lag_values(self, snap: LagSnapshot, values: dict[str, float | None]) -> None:
        if snap.observed_at is None:
            return
        for g in snap.groups:
            values[f"g:{g.group}:lag"] = float(g.lag)
            values[f"g:{g.group}:lag_s"] = g.lag_seconds
            values[f"g:{g.group}:status"] = float(g.status.code)
            for p in g.partitions:
                values[f"p:{g.group}:{p.topic}:{p.partition}:lag"] = float(p.lag)
                values[f"p:{g.group}:{p.topic}:{p.partition}:lag_s"] = p.lag_seconds

    async def _topics(self, at: float, values: dict[str, float | None]) -> dict[str, Any]:
        offsets = await _topic_offsets(self.settings, store_topics_watched(self.settings))
        ends = {t: e for t, (_, e) in offsets.items()}
        previous, self._previous_ends = self._previous_ends, (at, ends)
        table: dict[str, Any] = {}
        for topic, (start, end) in offsets.items():
            rate: float | None = None
            if previous is not None and at > previous[0] and topic in previous[1]:
                # Records/s appended since the previous tick (a re-created topic's ends go back: no figure).
                delta = end - previous[1][topic]
                rate = delta / (at - previous[0]) if delta >= 0 else None
            values[f"t:{topic}:rate"] = rate
            table[topic] = {"end": end, "records": end - start, "rate": rate}
        for topic in dlq_topics(self.settings):
            if topic in offsets:
                values[f"dlq:{topic}"] = float(offsets[topic][1])
        return {"topics": table, "dlq": {t: offsets[t][1] if t in offsets else None
                                         for t in dlq_topics(self.settings)}}

    async def _projection(self) -> dict[str, Any]:
        conn = await connect(self.settings, timeout_s=3.0)
        try:
            health = await projection_health(conn)
        finally:
            await conn.close()
        return {"anomalies": health.anomalies, "anomaliesTotal": health.anomalies_total,
                "quarantined": health.quarantined, "held": health.held}

    async def _migration(self) -> dict[str, Any]:
        out: dict[str, Any] = {"flags": None, "flagsVersion": None, "mismatches": None, "errors": []}
        try:
            if self._flags is None:
                flags = FlagStore(self.settings, principal="dashboard")
                await flags.start()
                self._flags = flags
            out["flags"] = dataclasses.asdict(self._flags.current())
            out["flagsVersion"] = self._flags.version
        except AssessmentStoreError as e:
            out["errors"].append(f"flags: {e}")
        try:
            if self._mismatches is None:
                log_ = MismatchLog(self.settings)
                await log_.start()
                self._mismatches = log_
            out["mismatches"] = await self._mismatches.counts()
        except AssessmentStoreError as e:
            out["errors"].append(f"shadow mismatches: {e}")
        return out

    def _prom_values(self, prom: PromReading, values: dict[str, float | None]) -> dict[str, Any]:
        values["cmd:p50"], values["cmd:p95"], values["cmd:p99"] = prom.command_p50, prom.command_p95, prom.command_p99
        for backend, figures in prom.router.items():
            for key, v in figures.items():
                values[f"router:{backend}:{key}"] = v
        return {"targets": dict(prom.targets),
                "command": {"p50": prom.command_p50, "p95": prom.command_p95, "p99": prom.command_p99},
                "router": {b: dict(f) for b, f in prom.router.items()}}


def _describe(e: object) -> str:
    return f"{type(e).__name__}: {e}"[:300]


def _or_error(result: object) -> dict[str, Any]:
    if isinstance(result, BaseException):
        if not isinstance(result, (AssessmentStoreError, OSError, TimeoutError)):
            log.warning("dashboard: %s", _describe(result))
        return {"error": _describe(result)}
    assert isinstance(result, dict)
    return result
