"""``assessment-store migrate import-audit DIR``: the legacy service's audit log (an export's ``audit.jsonl``)
into ``public.migration_audit``, beside the store's own entries.

Idempotent: each row keeps the legacy entry's ``auditId`` under a unique index
(projections/sql/009_legacy_audit.sql), so importing an export twice, or two exports that overlap, adds
each entry once. Streamed in batches of ``batch_size`` lines, one statement per batch. The file must match
its manifest's SHA-256 (an edited or truncated log is refused, not half imported); lines that are not
audit entries are counted and listed, never guessed at.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from assessment_store.core import Settings, ValidationError
from assessment_store.projections import LegacyAuditRow, connection, import_legacy_audit, migrate, translate_db_errors

from ._export import AUDIT_FILE, read_manifest

__all__ = ["AuditImportReport", "import_audit", "parse_audit_entry"]

MAX_BAD_LINES_IN_REPORT = 100
_MAX_LINE_BYTES = 64 * 1024
"""An audit entry is a few hundred bytes; a longer line is not one."""


@dataclass(frozen=True, slots=True)
class AuditImportReport:
    path: Path
    lines: int
    imported: int
    """Entries new to the store."""
    already_imported: int
    invalid: int
    bad_lines: tuple[tuple[int, str], ...]
    """(line number, reason) of the first invalid lines."""


def parse_audit_entry(entry: Any, source: str) -> LegacyAuditRow:
    """One line of ``audit.jsonl`` (parsed JSON) as a row; ``ValueError`` naming what is wrong."""
    if not isinstance(entry, dict):
        raise ValueError("not a JSON object")
    for name in ("auditId", "at", "actor", "operation", "assessmentId"):
        if not isinstance(entry.get(name), str) or not entry[name]:
            raise ValueError(f"{name} must be a non-empty string")
        if len(entry[name]) > 1000 or "\x00" in entry[name]:
            raise ValueError(f"{name} is longer than 1000 characters or holds NUL")
    for name in ("statusBefore", "statusAfter"):
        if entry.get(name) is not None and not isinstance(entry[name], str):
            raise ValueError(f"{name} must be a string or null")
    seq = entry.get("seq")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
        raise ValueError("seq must be an integer")
    try:
        at = datetime.fromisoformat(str(entry["at"]).replace("Z", "+00:00"))
    except ValueError as e:
        raise ValueError(f"at is not an ISO-8601 time: {entry['at']!r}") from e
    if at.tzinfo is None:
        raise ValueError(f"at has no UTC offset: {entry['at']!r}")
    return LegacyAuditRow(
        legacy_audit_id=entry["auditId"], operation=entry["operation"], actor=entry["actor"], occurred_at=at,
        details={"assessmentId": entry["assessmentId"], "operation": entry["operation"],
                 "statusBefore": entry.get("statusBefore"), "statusAfter": entry.get("statusAfter"),
                 "seq": seq, "source": source},
    )


async def import_audit(settings: Settings, export_dir: Path, *, batch_size: int = 1000) -> AuditImportReport:
    """Import ``export_dir``'s audit log (see the module docstring)."""
    if batch_size < 1:
        raise ValidationError("batch_size", "must be at least 1")
    manifest = read_manifest(export_dir)
    path = Path(export_dir) / AUDIT_FILE
    if not path.is_file():
        raise ValidationError("export", f"{path} does not exist")
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    if sha.hexdigest() != manifest.audit.sha256:
        raise ValidationError("export", f"{path} does not match its manifest (SHA-256 {sha.hexdigest()}, the "
                                        f"manifest says {manifest.audit.sha256}): edited or truncated; nothing imported")
    lines = imported = seen = invalid = 0
    bad: list[tuple[int, str]] = []
    async with connection(settings) as conn:
        with translate_db_errors("preparing the audit table"):
            await migrate(conn)
        batch: list[LegacyAuditRow] = []

        async def flush() -> None:
            nonlocal imported, seen
            with translate_db_errors("importing the legacy audit log"):
                new = await import_legacy_audit(conn, batch)
            imported += new
            seen += len(batch) - new
            batch.clear()

        with path.open("rb") as f:
            for raw in f:
                lines += 1
                if not raw.strip():
                    continue
                try:
                    if len(raw) > _MAX_LINE_BYTES:
                        raise ValueError(f"line of {len(raw)} bytes, above {_MAX_LINE_BYTES}")
                    batch.append(parse_audit_entry(json.loads(raw), manifest.legacy_url))
                except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
                    invalid += 1
                    if len(bad) < MAX_BAD_LINES_IN_REPORT:
                        bad.append((lines, str(e)[:300]))
                    continue
                if len(batch) >= batch_size:
                    await flush()
        if batch:
            await flush()
    return AuditImportReport(path, lines, imported, seen, invalid, tuple(bad))
