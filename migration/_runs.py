"""Validation runs kept in PostgreSQL (public.migration_validations, projections/sql/008), so that a
later step can require a recent pass (``require_recent_pass``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg

from assessment_store.core import Settings, StoreUsageError
from assessment_store.projections import connection, migrate, translate_db_errors

from ._model import ValidationReport, ValidationRun, ValidationVerdict

__all__ = ["NoRecentPass", "latest_validation", "record_validation", "require_recent_pass"]


class NoRecentPass(StoreUsageError):
    """No validation passed recently enough (``.run_id``: the latest run of that kind, None if none)."""

    def __init__(self, kind: str, max_age: timedelta, latest: ValidationRun | None) -> None:
        self.kind = kind
        self.max_age = max_age
        self.run_id = latest.run_id if latest is not None else None
        what = ("no validation has run" if latest is None
                else f"the latest validation (run {latest.run_id}, {latest.finished_at.isoformat()}) "
                     f"{'failed' if latest.verdict is ValidationVerdict.FAIL else 'is too old'}")
        super().__init__(f"migrate validate ({kind}) has not passed within {max_age}: {what}; "
                         "run `assessment-store migrate validate`")


async def record_validation(conn: asyncpg.Connection, report: ValidationReport) -> int:
    """Insert the run; its id."""
    with translate_db_errors("recording a validation run"):
        await migrate(conn)
        summary: dict[str, object] = {"buckets_differing": report.buckets_differing, "rows_fetched": report.rows_fetched,
                   "histories_checked": report.histories_checked, "false_alarm_buckets": report.false_alarm_buckets,
                   "seconds": report.seconds}
        if report.export_dir is not None:
            summary["export_dir"] = report.export_dir
        return int(await conn.fetchval(
            "INSERT INTO public.migration_validations (kind, verdict, started_at, finished_at, legacy_source,"
            " id_prefix, buckets, legacy_count, store_count, totals, summary)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::jsonb, $11::text::jsonb) RETURNING id",
            report.kind, report.verdict.value, report.started_at, report.finished_at, report.legacy_source,
            report.id_prefix, report.buckets, report.legacy_count, report.store_count,
            json.dumps({k.value: v for k, v in report.totals.items()}), json.dumps(summary),
        ))


async def latest_validation(settings: Settings, *, kind: str = "after", id_prefix: str = "") -> ValidationRun | None:
    """The latest recorded run of ``kind`` over ``id_prefix`` ('' = every assessment), or None."""
    async with connection(settings) as conn:
        with translate_db_errors("reading validation runs"):
            await migrate(conn)
            r = await conn.fetchrow(
                "SELECT id, kind, verdict, started_at, finished_at, legacy_source, id_prefix, buckets, legacy_count,"
                " store_count, totals FROM public.migration_validations WHERE kind = $1 AND id_prefix = $2"
                " ORDER BY finished_at DESC, id DESC LIMIT 1", kind, id_prefix)
    if r is None:
        return None
    totals = r["totals"] if isinstance(r["totals"], dict) else json.loads(r["totals"])
    return ValidationRun(r["id"], r["kind"], ValidationVerdict(r["verdict"]), r["started_at"], r["finished_at"],
                         r["legacy_source"], r["id_prefix"], r["buckets"], r["legacy_count"], r["store_count"],
                         {str(k): int(v) for k, v in totals.items()})


async def require_recent_pass(settings: Settings, max_age: timedelta, *, kind: str = "after",
                              id_prefix: str = "") -> ValidationRun:
    """The latest run (over ``id_prefix``), when it passed within ``max_age``; else ``NoRecentPass``."""
    latest = await latest_validation(settings, kind=kind, id_prefix=id_prefix)
    if latest is None or latest.verdict is not ValidationVerdict.PASS or datetime.now(UTC) - latest.finished_at > max_age:
        raise NoRecentPass(kind, max_age, latest)
    return latest
