"""``migrate baseline``: after the migration, tune and measure (docs/migration.md, "Baseline").

Two parts. The **report**: ``ANALYZE`` of the projection's tables (``VACUUM (ANALYZE)`` when asked),
then what ``pg_stat_user_indexes`` / ``pg_stat_user_tables`` say: unused indexes with their size,
tables with many dead tuples, sequential scans on large tables, each with the suggested action.

The **baseline**: the store's performance over a window ending now, from what the store already
has. The router instances' windows on the observations topic (``WindowObservation``: calls, errors,
a latency histogram per instance per window; folded by ``(instance, start)``, last write wins, as
the rollout controller does) give throughput, error rate and response times; the projection gives
the commands processed (``command_outcomes``, accepted vs refused) and the events recorded in the
window. Without router observations, throughput and error rate come from the projection's outcomes
and the response times are unknown. Each baseline is kept in ``public.migration_baselines``;
``compare`` flags what got worse than the latest one beyond a tolerance.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from assessment_store.core import JSON, Settings
from assessment_store.projections import (
    IndexUsage, StoredBaseline, TableStats, analyze_tables, connection, event_count, index_usage, latest_baseline,
    migrate, outcome_counts, record_baseline, table_stats, vacuum_tables,
)
from assessment_store.streams import ensure_topics, kafka_client_options, translate_kafka_errors

from ._observations import (
    LATENCY_BUCKETS_MS,
    OBSERVATIONS_TOPIC,
    WindowObservation,
    latency_percentile_ms,
    observations_topic_spec,
)

__all__ = [
    "BaselineReport", "PerformanceBaseline", "Regression", "Suggestion", "Tolerance", "compare_baselines",
    "run_baseline",
]

log = logging.getLogger("assessment_store.migration.baseline")


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How much worse than the stored baseline is still fine: relative for throughput and p95 (0.2 = 20 %),
    absolute points for the error rate (0.01 = 1 point)."""

    p95: float = 0.20
    throughput: float = 0.20
    error_rate: float = 0.01


@dataclass(frozen=True, slots=True)
class Suggestion:
    kind: str
    """unused_index | dead_tuples | seq_scans | never_analyzed"""
    table: str
    detail: str
    action: str

    def to_json(self) -> dict[str, JSON]:
        return {"kind": self.kind, "table": self.table, "detail": self.detail, "action": self.action}


@dataclass(frozen=True, slots=True)
class PerformanceBaseline:
    window_start: float
    window_end: float
    source: str
    """``observations`` when router windows were found in the window, else ``projection``."""
    calls: int
    errors: int
    instances: int
    observation_windows: int
    latency: tuple[int, ...]
    outcomes_accepted: int
    outcomes_refused: int
    events: int

    @property
    def window_s(self) -> float:
        return self.window_end - self.window_start

    @property
    def requests(self) -> int:
        return self.calls if self.source == "observations" else self.outcomes_accepted + self.outcomes_refused

    @property
    def throughput_per_s(self) -> float:
        return self.requests / self.window_s if self.window_s > 0 else 0.0

    @property
    def throughput_per_min(self) -> float:
        return self.throughput_per_s * 60

    @property
    def error_rate(self) -> float | None:
        """Observations: store attempts that failed with a backend error; projection: refused commands."""
        if self.source == "observations":
            return self.errors / self.calls if self.calls else None
        return self.refused_rate

    @property
    def refused_rate(self) -> float | None:
        n = self.outcomes_accepted + self.outcomes_refused
        return self.outcomes_refused / n if n else None

    @property
    def events_per_s(self) -> float:
        return self.events / self.window_s if self.window_s > 0 else 0.0

    @property
    def avg_ms(self) -> float | None:
        """Estimated from the histogram: each call at its bucket's midpoint (the last, open bucket at its lower bound)."""
        total = sum(self.latency)
        if not total:
            return None
        acc = 0.0
        lower = 0.0
        for bound, n in zip(LATENCY_BUCKETS_MS, self.latency, strict=True):
            acc += n * (lower if math.isinf(bound) else (lower + bound) / 2)
            lower = bound
        return acc / total

    @property
    def p95_ms(self) -> float | None:
        return latency_percentile_ms(self.latency, 0.95)

    @property
    def p99_ms(self) -> float | None:
        return latency_percentile_ms(self.latency, 0.99)

    def to_json(self) -> dict[str, JSON]:
        return {"windowStart": _iso(self.window_start), "windowEnd": _iso(self.window_end), "windowS": self.window_s,
                "source": self.source, "requests": self.requests, "calls": self.calls, "errors": self.errors,
                "instances": self.instances, "observationWindows": self.observation_windows,
                "throughputPerS": self.throughput_per_s, "throughputPerMin": self.throughput_per_min,
                "errorRate": self.error_rate, "avgMs": self.avg_ms, "p95Ms": _finite(self.p95_ms),
                "p99Ms": _finite(self.p99_ms), "latency": list(self.latency),
                "outcomesAccepted": self.outcomes_accepted, "outcomesRefused": self.outcomes_refused,
                "refusedRate": self.refused_rate, "events": self.events, "eventsPerS": self.events_per_s}


@dataclass(frozen=True, slots=True)
class Regression:
    metric: str
    before: float
    after: float
    limit: float

    def describe(self) -> str:
        if self.metric == "errorRate":
            return (f"error rate {self.after * 100:.2f} % vs {self.before * 100:.2f} % "
                    f"(limit {self.limit * 100:.2f} %)")
        unit = "/s" if self.metric == "throughputPerS" else " ms"
        name = {"throughputPerS": "throughput", "p95Ms": "p95"}.get(self.metric, self.metric)
        change = (self.after - self.before) / self.before * 100 if self.before else math.inf
        return f"{name} {self.after:.3g}{unit} vs {self.before:.3g}{unit} ({change:+.0f} %, limit {self.limit:.3g}{unit})"

    def to_json(self) -> dict[str, JSON]:
        return {"metric": self.metric, "before": self.before, "after": self.after, "limit": self.limit}


@dataclass(frozen=True, slots=True)
class BaselineReport:
    schema: str
    analyzed: tuple[str, ...]
    vacuumed: tuple[str, ...]
    tables: tuple[TableStats, ...]
    indexes: tuple[IndexUsage, ...]
    suggestions: tuple[Suggestion, ...]
    baseline: PerformanceBaseline
    baseline_id: int
    compared_with: StoredBaseline | None = None
    regressions: tuple[Regression, ...] = field(default=())

    def to_json(self) -> dict[str, JSON]:
        return {
            "schema": self.schema, "analyzed": list(self.analyzed), "vacuumed": list(self.vacuumed),
            "tables": [{"table": t.table, "liveTuples": t.live_tuples, "deadTuples": t.dead_tuples,
                        "deadRatio": t.dead_ratio, "seqScans": t.seq_scans, "seqTuplesRead": t.seq_tuples_read,
                        "indexScans": t.index_scans, "sizeBytes": t.size_bytes,
                        "lastAnalyze": None if t.last_analyze is None else t.last_analyze.isoformat(),
                        "lastVacuum": None if t.last_vacuum is None else t.last_vacuum.isoformat()}
                       for t in self.tables],
            "indexes": [{"table": i.table, "index": i.index, "scans": i.scans, "sizeBytes": i.size_bytes,
                         "unique": i.unique} for i in self.indexes],
            "suggestions": [s.to_json() for s in self.suggestions],
            "baseline": {"id": self.baseline_id, **self.baseline.to_json()},
            "comparedWith": None if self.compared_with is None else {
                "id": self.compared_with.id, "recordedAt": self.compared_with.recorded_at.isoformat(),
                **{k: self.compared_with.figures.get(k) for k in ("throughputPerS", "errorRate", "p95Ms")}},
            "regressions": [r.to_json() for r in self.regressions],
        }


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def _finite(v: float | None) -> float | None:
    return None if v is None or math.isinf(v) else v


def suggest(tables: list[TableStats], indexes: list[IndexUsage], *, dead_ratio: float = 0.2,
            large_rows: int = 10_000) -> list[Suggestion]:
    """The actions the statistics call for."""
    out: list[Suggestion] = []
    for i in indexes:
        if i.scans == 0 and not i.unique:
            out.append(Suggestion("unused_index", i.table, f"{i.index}: 0 scans, {_size(i.size_bytes)}",
                                  f"DROP INDEX {i.index} if no query needs it (scans count since the last stats reset)"))
    for t in tables:
        if t.dead_tuples and t.dead_ratio > dead_ratio:
            out.append(Suggestion("dead_tuples", t.table, f"{t.dead_tuples:,} dead of {t.live_tuples + t.dead_tuples:,} "
                                  f"({t.dead_ratio * 100:.0f} %)", "VACUUM (ANALYZE) it (migrate baseline --vacuum); "
                                  "tune autovacuum_vacuum_scale_factor for it if it recurs"))
        if t.live_tuples >= large_rows and t.seq_scans > t.index_scans:
            out.append(Suggestion("seq_scans", t.table, f"{t.seq_scans:,} sequential scans ({t.seq_tuples_read:,} rows "
                                  f"read) vs {t.index_scans:,} index scans on {t.live_tuples:,} rows",
                                  "find the queries (pg_stat_statements) and index their predicates"))
    return out


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n //= 1024
    return f"{n} TB"


async def fold_observations(settings: Settings, since_s: float, until_s: float, *,
                            topic: str = OBSERVATIONS_TOPIC) -> list[WindowObservation]:
    """The router windows that started in [since_s, until_s), one per (instance, start), last write wins."""
    await ensure_topics(settings, [observations_topic_spec(topic)])
    tp = TopicPartition(topic, 0)
    reader = AIOKafkaConsumer(**kafka_client_options(settings, "admin"), group_id=None, enable_auto_commit=False,
                              fetch_max_wait_ms=50)
    found: dict[tuple[str, float], WindowObservation] = {}
    with translate_kafka_errors(f"reading {topic}"):
        await reader.start()
        try:
            reader.assign([tp])
            end = (await reader.end_offsets([tp]))[tp]
            # A window's record is produced after the window starts: seeking by the window's start
            # (less an hour for windows published late) skips nothing of it.
            at = (await reader.offsets_for_times({tp: int(max(0.0, since_s - 3600) * 1000)})).get(tp)
            if at is None:
                return []
            reader.seek(tp, at.offset)
            while await reader.position(tp) < end:
                batch = await reader.getmany(tp, timeout_ms=1000)
                for rec in batch.get(tp, []):
                    if rec.offset >= end or rec.value is None:
                        continue
                    try:
                        obs = WindowObservation.from_json(json.loads(rec.value))
                    except (ValueError, KeyError, TypeError):
                        log.warning("baseline: observation record %s unreadable; skipped", rec.offset)
                        continue
                    if since_s <= obs.start < until_s:
                        found[obs.key] = obs
        finally:
            await reader.stop()
    return list(found.values())


def compare_baselines(current: PerformanceBaseline, previous: dict[str, Any], tolerance: Tolerance) -> list[Regression]:
    """What got worse than ``previous`` (a stored baseline's figures) beyond ``tolerance``."""
    out: list[Regression] = []
    before_tp = previous.get("throughputPerS")
    if isinstance(before_tp, (int, float)) and before_tp > 0:
        limit = before_tp * (1 - tolerance.throughput)
        if current.throughput_per_s < limit:
            out.append(Regression("throughputPerS", float(before_tp), current.throughput_per_s, limit))
    before_p95 = previous.get("p95Ms")
    after_p95 = _finite(current.p95_ms)
    if isinstance(before_p95, (int, float)) and after_p95 is not None:
        limit = before_p95 * (1 + tolerance.p95)
        if after_p95 > limit:
            out.append(Regression("p95Ms", float(before_p95), after_p95, limit))
    before_err = previous.get("errorRate")
    after_err = current.error_rate
    if isinstance(before_err, (int, float)) and after_err is not None:
        limit = before_err + tolerance.error_rate
        if after_err > limit:
            out.append(Regression("errorRate", float(before_err), after_err, limit))
    return out


async def measure(settings: Settings, window_s: float, *, now_s: float | None = None,
                  observations_topic: str = OBSERVATIONS_TOPIC) -> PerformanceBaseline:
    """The performance of the window of ``window_s`` ending now."""
    until = time.time() if now_s is None else now_s
    since = until - window_s
    observations = await fold_observations(settings, since, until, topic=observations_topic)
    latency = [0] * len(LATENCY_BUCKETS_MS)
    for o in observations:
        for i, n in enumerate(o.latency):
            latency[i] += n
    calls = sum(o.calls for o in observations)
    async with connection(settings) as conn:
        await migrate(conn)
        accepted, refused = await outcome_counts(conn, datetime.fromtimestamp(since, UTC),
                                                 datetime.fromtimestamp(until, UTC))
        events = await event_count(conn, datetime.fromtimestamp(since, UTC), datetime.fromtimestamp(until, UTC))
    return PerformanceBaseline(
        window_start=since, window_end=until, source="observations" if calls else "projection", calls=calls,
        errors=sum(o.errors for o in observations), instances=len({o.instance for o in observations}),
        observation_windows=len({o.start for o in observations}), latency=tuple(latency),
        outcomes_accepted=accepted, outcomes_refused=refused, events=events)


async def run_baseline(settings: Settings, *, window_s: float = 900.0, vacuum: bool = False, compare: bool = False,
                       tolerance: Tolerance = Tolerance(), dead_ratio: float = 0.2, large_rows: int = 10_000,
                       observations_topic: str = OBSERVATIONS_TOPIC, schema: str = "projection") -> BaselineReport:
    """ANALYZE (or VACUUM (ANALYZE)) the projection, read its statistics, measure the window, compare it
    with the latest stored baseline (``compare``), then store it."""
    if window_s <= 0:
        raise ValueError("the window must be > 0")
    async with connection(settings) as conn:
        await migrate(conn)
        vacuumed = await vacuum_tables(conn, schema) if vacuum else []
        analyzed = vacuumed or await analyze_tables(conn, schema)
        tables = await table_stats(conn, schema)
        indexes = await index_usage(conn, schema)
    baseline = await measure(settings, window_s, observations_topic=observations_topic)
    async with connection(settings) as conn:
        previous = await latest_baseline(conn) if compare else None
        regressions = compare_baselines(baseline, previous.figures, tolerance) if previous is not None else []
        stored = await record_baseline(
            conn, window_start=datetime.fromtimestamp(baseline.window_start, UTC),
            window_end=datetime.fromtimestamp(baseline.window_end, UTC), source=baseline.source,
            throughput_per_s=baseline.throughput_per_s, error_rate=baseline.error_rate, avg_ms=baseline.avg_ms,
            p95_ms=_finite(baseline.p95_ms), p99_ms=_finite(baseline.p99_ms), figures=baseline.to_json())
    return BaselineReport(schema, tuple(analyzed), tuple(vacuumed), tuple(tables), tuple(indexes),
                          tuple(suggest(tables, indexes, dead_ratio=dead_ratio, large_rows=large_rows)), baseline,
                          stored.id, previous, tuple(regressions))
