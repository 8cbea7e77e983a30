"""``public.migration_audit``: who changed what, when. One writer function for every operation that
leaves a trace there (flag changes, legacy imports, projection swaps, re-folds), and the import of the
legacy service's own audit log (``import_legacy_audit``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from assessment_store.core import JSON

__all__ = ["LEGACY_AUDIT_OPERATION_PREFIX", "LegacyAuditRow", "import_legacy_audit", "record_audit"]

LEGACY_AUDIT_OPERATION_PREFIX = "legacy."
"""An imported legacy entry's operation is this + the legacy operation (``legacy.start``), apart from the store's."""


async def record_audit(conn: asyncpg.Connection, operation: str, actor: str, details: dict[str, JSON]) -> None:
    """Insert one audit row on ``conn``, so that it commits or rolls back with the caller's transaction
    (a flag change, say, must never be listed when its append to the log failed)."""
    await conn.execute(
        "INSERT INTO public.migration_audit (operation, actor, details) VALUES ($1, $2, $3)",
        operation, actor, details,
    )


@dataclass(frozen=True, slots=True)
class LegacyAuditRow:
    """One entry of the legacy service's audit log, as ``import_legacy_audit`` stores it."""

    legacy_audit_id: str
    """The legacy entry's own id: the key that makes a second import of it a no-op."""
    operation: str
    """The legacy operation (create, start, progress, ...), stored with ``LEGACY_AUDIT_OPERATION_PREFIX``."""
    actor: str
    occurred_at: datetime
    details: dict[str, JSON]


async def import_legacy_audit(conn: asyncpg.Connection, rows: Sequence[LegacyAuditRow]) -> int:
    """Insert the rows not imported before (by ``legacy_audit_id``) in one statement; how many were new."""
    if not rows:
        return 0
    status = await conn.execute(
        "INSERT INTO public.migration_audit (operation, actor, details, occurred_at, legacy_audit_id)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[]::jsonb[], $4::timestamptz[], $5::text[])"
        " ON CONFLICT (legacy_audit_id) WHERE legacy_audit_id IS NOT NULL DO NOTHING",
        [LEGACY_AUDIT_OPERATION_PREFIX + r.operation for r in rows], [r.actor for r in rows],
        [json.dumps(r.details, ensure_ascii=False) for r in rows], [r.occurred_at for r in rows],
        [r.legacy_audit_id for r in rows],
    )
    return int(status.rsplit(" ", 1)[-1])
