"""What PostgreSQL knows about the projection's tables and indexes (``pg_stat_user_tables``,
``pg_stat_user_indexes``), ANALYZE / VACUUM of them, the window counts a performance baseline reads
(command outcomes, events), and the baselines kept in ``public.migration_baselines``
(projections/sql/010). Used by ``assessment-store migrate baseline``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from assessment_store.core import JSON

from ._db import LIVE_SCHEMA, check_schema_name, translate_db_errors

__all__ = [
    "IndexUsage", "StoredBaseline", "TableStats", "analyze_tables", "index_usage", "latest_baseline",
    "outcome_counts", "record_baseline", "event_count", "table_stats", "vacuum_tables",
]


@dataclass(frozen=True, slots=True)
class TableStats:
    schema: str
    table: str
    live_tuples: int
    dead_tuples: int
    seq_scans: int
    seq_tuples_read: int
    index_scans: int
    size_bytes: int
    """The table with its indexes and TOAST (``pg_total_relation_size``)."""
    last_analyze: datetime | None
    last_vacuum: datetime | None

    @property
    def dead_ratio(self) -> float:
        total = self.live_tuples + self.dead_tuples
        return self.dead_tuples / total if total else 0.0


@dataclass(frozen=True, slots=True)
class IndexUsage:
    schema: str
    table: str
    index: str
    scans: int
    size_bytes: int
    unique: bool
    """Unique and primary-key indexes enforce a constraint: never suggested for removal."""


@dataclass(frozen=True, slots=True)
class StoredBaseline:
    id: int
    recorded_at: datetime
    figures: dict[str, Any]


async def _qualified_tables(conn: asyncpg.Connection, schema: str) -> list[str]:
    # Identifiers cannot be bind parameters of ANALYZE/VACUUM: PostgreSQL quotes them itself (format %I).
    rows = await conn.fetch("SELECT format('%I.%I', schemaname, tablename) AS name FROM pg_tables"
                            " WHERE schemaname = $1 ORDER BY tablename", schema)
    return [str(r["name"]) for r in rows]


async def analyze_tables(conn: asyncpg.Connection, schema: str = LIVE_SCHEMA) -> list[str]:
    """``ANALYZE`` every table of ``schema``; their qualified names."""
    check_schema_name(schema)
    with translate_db_errors(f"analyzing the tables of {schema}"):
        names = await _qualified_tables(conn, schema)
        for name in names:
            await conn.execute(f"ANALYZE {name}")
    return names


async def vacuum_tables(conn: asyncpg.Connection, schema: str = LIVE_SCHEMA) -> list[str]:
    """``VACUUM (ANALYZE)`` every table of ``schema`` (outside a transaction, as VACUUM must be)."""
    check_schema_name(schema)
    with translate_db_errors(f"vacuuming the tables of {schema}"):
        names = await _qualified_tables(conn, schema)
        for name in names:
            await conn.execute(f"VACUUM (ANALYZE) {name}")
    return names


async def table_stats(conn: asyncpg.Connection, schema: str = LIVE_SCHEMA) -> list[TableStats]:
    """Per table of ``schema``: live and dead tuples, scans, size, last analyze and vacuum."""
    with translate_db_errors(f"reading pg_stat_user_tables for {schema}"):
        rows = await conn.fetch(
            "SELECT schemaname, relname, n_live_tup, n_dead_tup, seq_scan, seq_tup_read, coalesce(idx_scan, 0) AS idx,"
            " pg_total_relation_size(relid) AS size, greatest(last_analyze, last_autoanalyze) AS analyzed,"
            " greatest(last_vacuum, last_autovacuum) AS vacuumed"
            " FROM pg_stat_user_tables WHERE schemaname = $1 ORDER BY relname", schema)
    return [TableStats(r["schemaname"], r["relname"], int(r["n_live_tup"]), int(r["n_dead_tup"]), int(r["seq_scan"]),
                       int(r["seq_tup_read"]), int(r["idx"]), int(r["size"]), r["analyzed"], r["vacuumed"])
            for r in rows]


async def index_usage(conn: asyncpg.Connection, schema: str = LIVE_SCHEMA) -> list[IndexUsage]:
    """Per index of ``schema``: scans since the statistics were reset, size, whether it is unique."""
    with translate_db_errors(f"reading pg_stat_user_indexes for {schema}"):
        rows = await conn.fetch(
            "SELECT s.schemaname, s.relname, s.indexrelname, s.idx_scan, pg_relation_size(s.indexrelid) AS size,"
            " i.indisunique OR i.indisprimary AS uniq"
            " FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid"
            " WHERE s.schemaname = $1 ORDER BY s.relname, s.indexrelname", schema)
    return [IndexUsage(r["schemaname"], r["relname"], r["indexrelname"], int(r["idx_scan"]), int(r["size"]),
                       bool(r["uniq"])) for r in rows]


async def outcome_counts(conn: asyncpg.Connection, since: datetime, until: datetime) -> tuple[int, int]:
    """(accepted, refused) command outcomes processed in [since, until)."""
    with translate_db_errors("counting command outcomes"):
        r = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE accepted) AS ok, count(*) FILTER (WHERE NOT accepted) AS refused"
            " FROM projection.command_outcomes WHERE processed_at >= $1 AND processed_at < $2", since, until)
    assert r is not None  # an aggregate without GROUP BY returns one row
    return int(r["ok"]), int(r["refused"])


async def event_count(conn: asyncpg.Connection, since: datetime, until: datetime) -> int:
    """Events the projection recorded in [since, until)."""
    with translate_db_errors("counting recorded events"):
        return int(await conn.fetchval(
            "SELECT count(*) FROM projection.assessment_events WHERE recorded_at >= $1 AND recorded_at < $2",
            since, until))


async def record_baseline(conn: asyncpg.Connection, *, window_start: datetime, window_end: datetime, source: str,
                          throughput_per_s: float, error_rate: float | None, avg_ms: float | None,
                          p95_ms: float | None, p99_ms: float | None, figures: dict[str, JSON]) -> StoredBaseline:
    """Insert one baseline; the stored row."""
    with translate_db_errors("recording a performance baseline"):
        r = await conn.fetchrow(
            "INSERT INTO public.migration_baselines (window_start, window_end, source, throughput_per_s, error_rate,"
            " avg_ms, p95_ms, p99_ms, figures) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " RETURNING id, recorded_at", window_start, window_end, source, throughput_per_s, error_rate, avg_ms,
            p95_ms, p99_ms, figures)
    assert r is not None  # INSERT ... RETURNING of one row
    return StoredBaseline(int(r["id"]), r["recorded_at"], dict(figures))


async def latest_baseline(conn: asyncpg.Connection) -> StoredBaseline | None:
    """The most recently recorded baseline, or None."""
    with translate_db_errors("reading the latest performance baseline"):
        r = await conn.fetchrow("SELECT id, recorded_at, figures FROM public.migration_baselines"
                                " ORDER BY recorded_at DESC, id DESC LIMIT 1")
    return None if r is None else StoredBaseline(int(r["id"]), r["recorded_at"], dict(r["figures"]))
