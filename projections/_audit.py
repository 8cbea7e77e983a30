"""``public.migration_audit``: who changed what, when. One writer function for every operation that
leaves a trace there (flag changes, legacy imports, projection swaps, re-folds)."""

from __future__ import annotations

import asyncpg

from assessment_store.core import JSON

__all__ = ["record_audit"]


async def record_audit(conn: asyncpg.Connection, operation: str, actor: str, details: dict[str, JSON]) -> None:
    """Insert one audit row on ``conn``, so that it commits or rolls back with the caller's transaction
    (a flag change, say, must never be listed when its append to the log failed)."""
    await conn.execute(
        "INSERT INTO public.migration_audit (operation, actor, details) VALUES ($1, $2, $3)",
        operation, actor, details,
    )
