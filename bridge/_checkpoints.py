"""Where a snapshot import stands: one row per export file (by SHA-256) in
``public.legacy_import_checkpoints``, the import's own table.

A checkpoint says: every line before ``next_line`` is done (its commands' outcomes awaited, its
rejected entries fsynced to ``<file>.rejected.jsonl``, which is ``rejected_bytes`` long), and the
file resumes at byte ``next_offset``. The import writes it only after both are durable, so a crash
anywhere redoes at most one batch, with the same command ids.
"""

from __future__ import annotations

import getpass
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from assessment_store.projections import record_audit, translate_db_errors

__all__ = ["Checkpoint", "CheckpointStore", "ImportCounts"]


@dataclass
class ImportCounts:
    """What an import has done so far, across resumed runs (kept in the checkpoint as JSON)."""

    imported: int = 0
    up_to_date: int = 0
    store_ahead: int = 0
    blank: int = 0
    rejected: int = 0
    commands_sent: int = 0
    accepted: int = 0
    refused: int = 0
    batches: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {"imported": self.imported, "up_to_date": self.up_to_date, "store_ahead": self.store_ahead,
                "blank": self.blank, "rejected": self.rejected, "commands_sent": self.commands_sent,
                "accepted": self.accepted, "refused": self.refused, "batches": self.batches,
                "by_kind": dict(self.by_kind)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImportCounts:
        return cls(**{k: int(v) for k, v in d.items() if k != "by_kind"}, by_kind=Counter(d.get("by_kind", {})))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    next_line: int
    next_offset: int
    rejected_bytes: int
    counts: ImportCounts
    finished: bool


class CheckpointStore:
    """Reads and writes one file's checkpoint; every statement is parameterised."""

    def __init__(self, pool: asyncpg.Pool, sha256: str, path: Path, total_lines: int) -> None:
        self.pool = pool
        self.sha256 = sha256
        self.path = path
        self.total_lines = total_lines

    async def load(self) -> Checkpoint | None:
        with translate_db_errors("reading the import checkpoint"):
            r = await self.pool.fetchrow(
                "SELECT next_line, next_offset, rejected_bytes, counters, finished_at"
                " FROM public.legacy_import_checkpoints WHERE file_sha256 = $1", self.sha256,
            )
        if r is None:
            return None
        return Checkpoint(next_line=r["next_line"], next_offset=r["next_offset"], rejected_bytes=r["rejected_bytes"],
                          counts=ImportCounts.from_json(r["counters"]), finished=r["finished_at"] is not None)

    async def save(self, *, next_line: int, next_offset: int, rejected_bytes: int, counts: ImportCounts,
                   fresh: bool = False) -> None:
        """Record progress; ``fresh`` starts the file's import anew (its start time too)."""
        with translate_db_errors("writing the import checkpoint"):
            await self.pool.execute(
                "INSERT INTO public.legacy_import_checkpoints (file_sha256, path, total_lines, next_line, next_offset,"
                " rejected_bytes, counters) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT (file_sha256) DO UPDATE SET path = EXCLUDED.path, total_lines = EXCLUDED.total_lines,"
                " next_line = EXCLUDED.next_line, next_offset = EXCLUDED.next_offset,"
                " rejected_bytes = EXCLUDED.rejected_bytes, counters = EXCLUDED.counters, updated_at = now(),"
                " finished_at = NULL,"
                " started_at = CASE WHEN $8 THEN now() ELSE public.legacy_import_checkpoints.started_at END",
                self.sha256, str(self.path), self.total_lines, next_line, next_offset, rejected_bytes,
                counts.to_json(), fresh,
            )

    async def finish(self, counts: ImportCounts) -> None:
        """Mark the file done and leave the audit row, in one transaction."""
        with translate_db_errors("finishing the import"):
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "UPDATE public.legacy_import_checkpoints SET finished_at = now(), updated_at = now()"
                    " WHERE file_sha256 = $1", self.sha256,
                )
                await record_audit(conn, "legacy-import", f"{getpass.getuser()}@{socket.gethostname()}",
                                   {"file": str(self.path), "sha256": self.sha256, "lines": self.total_lines,
                                    **counts.to_json()})
