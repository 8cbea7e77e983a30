"""The projection's health in one round trip, for the dashboard: anomalies per kind and the
quarantine's size (assessments held aside, and the events held with them)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from ._db import translate_db_errors

__all__ = ["ProjectionHealth", "projection_health"]


@dataclass(frozen=True)
class ProjectionHealth:
    anomalies: dict[str, int]
    """Records never applied (duplicates, version gaps, undecodable, fenced), per kind."""
    quarantined: int
    """Assessments whose events PostgreSQL refused."""
    held: int
    """Events kept aside with them, the refused ones included."""

    @property
    def anomalies_total(self) -> int:
        return sum(self.anomalies.values())


async def projection_health(conn: asyncpg.Connection) -> ProjectionHealth:
    """Counts of the live projection's anomalies and quarantine (no row is read, only counted)."""
    with translate_db_errors("reading the projection's anomalies and quarantine"):
        kinds = await conn.fetch("SELECT kind, count(*) AS n FROM projection.anomalies GROUP BY kind ORDER BY kind")
        row = await conn.fetchrow("SELECT (SELECT count(*) FROM projection.quarantine) AS quarantined,"
                                  " (SELECT count(*) FROM projection.quarantine_held) AS held")
    assert row is not None  # a SELECT of two scalar subqueries always returns one row
    return ProjectionHealth({r["kind"]: int(r["n"]) for r in kinds}, int(row["quarantined"]), int(row["held"]))
