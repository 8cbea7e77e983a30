"""``migrate validate --before DIR``: an export (``migrate export``) against its manifest and against the legacy
service as it is now, before the export is imported (docs/migration.md).

1. Each file against the manifest: SHA-256, record count, counts per status.
2. ``assessments.jsonl``, streamed once: lines that are not records, ids listed twice, counts per status,
   and per bucket of ids the count and checksum of the canonical rows (migration/_canonical.py; the first
   line of an id counts, a repeat is reported as a duplicate).
3. Legacy now: its counts per status and bucket checksums; the buckets that differ are fetched from legacy
   and read again from the file, and compared field by field (lost: on legacy only; extra: in the export
   only; corrupted: a field differs).
4. ``audit.jsonl``, streamed once: every entry about an assessment the export holds, and per assessment
   the sequence of statuses must follow the legacy state machine (``legacy_transitions``, derived from the
   store's): each entry's transition allowed, and its status before equal to the previous entry's after.
   A ``restore`` (a snapshot loaded into legacy) sets a status without a transition: the check restarts there.

Memory: the ids of the export (and the audited status of each) and the differing buckets' rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from assessment_store.core import Settings, ValidationError
from assessment_store.projections import connection

from ._canonical import TWO_64, bucket_of, canonical_legacy, row_hash
from ._compare import VALIDATED_FIELDS, _same_field
from ._export import ASSESSMENTS_FILE, AUDIT_FILE, ExportedFile, read_manifest
from ._legacy_source import BUCKETS_PER_REQUEST, LegacyExport
from ._model import BEFORE_KINDS, Finding, FindingKind, ValidationReport
from ._runs import record_validation
from ._transitions import legacy_transitions
from ._validate import DEFAULT_BUCKETS, DEFAULT_MAX_FINDINGS, _Findings

__all__ = ["validate_before"]

_RESTORE = "restore"


@dataclass
class _FileScan:
    """What one pass over ``assessments.jsonl`` learns (mutable while it reads)."""

    sha256: str = ""
    records: int = 0
    size: int = 0
    statuses: dict[str, str] | None = None
    """id -> exported status (first line of the id)."""
    by_status: dict[str, int] = dataclasses.field(default_factory=dict)
    sums: dict[int, tuple[int, int]] = dataclasses.field(default_factory=dict)


async def validate_before(
    settings: Settings,
    export_dir: Path,
    *,
    legacy_url: str | None = None,
    buckets: int = DEFAULT_BUCKETS,
    max_findings: int = DEFAULT_MAX_FINDINGS,
    id_prefix: str | None = None,
    record: bool = True,
) -> ValidationReport:
    """Check the export in ``export_dir`` (see the module docstring). ``legacy_url`` and ``id_prefix`` default to
    the manifest's; the run is recorded (kind "before") unless ``record`` is false."""
    if not 1 <= buckets <= 1 << 20:
        raise ValidationError("buckets", f"must be between 1 and {1 << 20}, got {buckets}")
    if max_findings < 0:
        raise ValidationError("max_findings", f"must be at least 0, got {max_findings}")
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    url = (legacy_url or manifest.legacy_url).rstrip("/")
    prefix = manifest.id_prefix if id_prefix is None else id_prefix
    started = datetime.now(UTC)
    seconds: dict[str, float] = {}
    found = _Findings(max_findings, {k: 0 for k in BEFORE_KINDS})

    t = time.perf_counter()
    scan = _scan_assessments(export_dir / ASSESSMENTS_FILE, buckets, prefix, found)
    _against_manifest(manifest.assessments, scan.sha256, scan.records, scan.size, found)
    for status in sorted(manifest.by_status.keys() | scan.by_status.keys()):
        if manifest.by_status.get(status, 0) != scan.by_status.get(status, 0):
            found.add([Finding(FindingKind.CHECKSUM_MISMATCH, None, f"{ASSESSMENTS_FILE}:status:{status}",
                               (("manifest", manifest.by_status.get(status, 0)), ("file", scan.by_status.get(status, 0))),
                               "the manifest's count per status differs from the file's")])
    seconds["export"] = time.perf_counter() - t

    t = time.perf_counter()
    statuses = scan.statuses or {}
    rows_fetched = 0
    async with LegacyExport(url) as legacy:
        legacy_total, legacy_sums = await legacy.checksums(buckets, prefix)
        _, legacy_by_status = await legacy.status_counts(prefix)
        if legacy_total != len(statuses):
            found.add([Finding(FindingKind.COUNT_MISMATCH, None, "count",
                               (("legacy", legacy_total), ("export", len(statuses))),
                               f"legacy holds {legacy_total}, the export {len(statuses)}")])
        for status in sorted(legacy_by_status.keys() | scan.by_status.keys()):
            if legacy_by_status.get(status, 0) != scan.by_status.get(status, 0):
                found.add([Finding(FindingKind.COUNT_MISMATCH, None, f"status:{status}",
                                   (("legacy", legacy_by_status.get(status, 0)), ("export", scan.by_status.get(status, 0))))])
        differing = sorted(b for b in legacy_sums.keys() | scan.sums.keys() if legacy_sums.get(b) != scan.sums.get(b))
        seconds["checksums"] = time.perf_counter() - t
        t = time.perf_counter()
        ids_found: set[str] = set()
        for i in range(0, len(differing), BUCKETS_PER_REQUEST):
            chunk = differing[i:i + BUCKETS_PER_REQUEST]
            theirs = [r async for r in legacy.records(buckets, chunk, prefix)]
            mine = list(_records_of_buckets(export_dir / ASSESSMENTS_FILE, buckets, set(chunk), prefix))
            rows_fetched += len(theirs) + len(mine)
            for f in _compare_records(theirs, mine):
                if f.assessment_id is not None:
                    ids_found.add(f.assessment_id)
                found.add([f])
        seconds["descend"] = time.perf_counter() - t
    false_alarms = len(set(differing) - {bucket_of(aid, buckets) for aid in ids_found})

    t = time.perf_counter()
    checked = _check_audit(export_dir / AUDIT_FILE, manifest.audit, statuses, prefix, found)
    seconds["audit"] = time.perf_counter() - t

    report = ValidationReport(
        kind="before", legacy_source=url, id_prefix=prefix, buckets=buckets, started_at=started,
        finished_at=datetime.now(UTC), legacy_count=legacy_total, store_count=len(statuses),
        totals=dict(found.totals), findings=tuple(found.kept), max_findings=max_findings,
        buckets_differing=len(differing), rows_fetched=rows_fetched, histories_checked=checked,
        false_alarm_buckets=false_alarms, seconds=seconds, export_dir=str(export_dir),
    )
    if record:
        async with connection(settings) as conn:
            run_id = await record_validation(conn, report)
        report = dataclasses.replace(report, run_id=run_id)
    return report


def _lines(path: Path, sha: Any = None) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a file, hashing every byte into ``sha`` when given."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if sha is not None:
                sha.update(raw)
            yield number, raw


def _parse(raw: bytes, id_field: str) -> dict[str, Any] | str:
    """The JSON object of a line, or why it is not one."""
    try:
        obj = json.loads(raw)
    except ValueError as e:
        return f"not JSON: {e}"
    if not isinstance(obj, dict):
        return "not a JSON object"
    if not isinstance(obj.get(id_field), str) or not obj[id_field]:
        return f"{id_field} missing or not a non-empty string"
    return obj


def _against_manifest(entry: ExportedFile, sha256: str, records: int, size: int, found: _Findings) -> None:
    for what, manifest_value, file_value in (("sha256", entry.sha256, sha256), ("records", entry.records, records),
                                             ("bytes", entry.bytes, size)):
        if manifest_value != file_value:
            found.add([Finding(FindingKind.CHECKSUM_MISMATCH, None, f"{entry.name}:{what}",
                               (("manifest", manifest_value), ("file", file_value)),
                               f"{entry.name} does not match its manifest")])


def _scan_assessments(path: Path, buckets: int, prefix: str, found: _Findings) -> _FileScan:
    if not path.is_file():
        raise ValidationError("export", f"{path} does not exist")
    sha = hashlib.sha256()
    scan = _FileScan(statuses={})
    assert scan.statuses is not None
    repeats: dict[str, int] = {}
    for number, raw in _lines(path, sha):
        scan.size += len(raw)
        if not raw.strip():
            continue
        scan.records += 1
        obj = _parse(raw, "assessmentId")
        if isinstance(obj, str):
            found.add([Finding(FindingKind.INVALID_RECORD, None, f"{path.name}:{number}", (("line", raw[:200].decode(
                "utf-8", "replace")),), obj)])
            continue
        aid: str = obj["assessmentId"]
        if not aid.startswith(prefix):
            continue
        if aid in scan.statuses:
            repeats[aid] = repeats.get(aid, 1) + 1
            continue
        status = str(obj.get("status"))
        scan.statuses[aid] = status
        scan.by_status[status] = scan.by_status.get(status, 0) + 1
        b = bucket_of(aid, buckets)
        n, s = scan.sums.get(b, (0, 0))
        scan.sums[b] = (n + 1, (s + row_hash(canonical_legacy(obj))) % TWO_64)
    for aid, n in sorted(repeats.items()):
        found.add([Finding(FindingKind.DUPLICATE, aid, "assessmentId", (("export_lines", n), ("legacy", 1)),
                           f"the export lists {aid!r} {n} times")])
    scan.sha256 = sha.hexdigest()
    return scan


def _records_of_buckets(path: Path, buckets: int, wanted: set[int], prefix: str) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    for _, raw in _lines(path):
        obj = _parse(raw, "assessmentId") if raw.strip() else ""
        if isinstance(obj, str):
            continue
        aid = obj["assessmentId"]
        if aid.startswith(prefix) and aid not in seen and bucket_of(aid, buckets) in wanted:
            seen.add(aid)
            yield obj


def _brief(view: dict[str, Any]) -> dict[str, Any]:
    return {k: view.get(k) for k in ("status", "progress", "timestamp", "updatedAt")}


def _compare_records(legacy: list[dict[str, Any]], export: list[dict[str, Any]]) -> Iterator[Finding]:
    """Legacy's records against the export's, of the same buckets: lost, extra, one finding per differing field."""
    theirs = {r["assessmentId"]: r for r in legacy if isinstance(r.get("assessmentId"), str)}
    mine_ids: set[str] = set()
    for mine in export:
        aid = mine["assessmentId"]
        mine_ids.add(aid)
        other = theirs.get(aid)
        if other is None:
            yield Finding(FindingKind.EXTRA, aid, None, (("legacy", None), ("export", _brief(mine))),
                          "in the export, no longer on legacy")
            continue
        for name in VALIDATED_FIELDS:
            if not _same_field(name, other, mine):
                yield Finding(FindingKind.CORRUPTED, aid, name, (("legacy", other.get(name)), ("export", mine.get(name))))
    for aid in sorted(theirs.keys() - mine_ids):
        yield Finding(FindingKind.LOST, aid, None, (("legacy", _brief(theirs[aid])), ("export", None)),
                      "on legacy, not in the export")


def _check_audit(path: Path, entry: ExportedFile, statuses: dict[str, str], prefix: str, found: _Findings) -> int:
    if not path.is_file():
        raise ValidationError("export", f"{path} does not exist")
    allowed = legacy_transitions()
    sha = hashlib.sha256()
    records = size = checked = 0
    audited: dict[str, str | None] = {}
    for number, raw in _lines(path, sha):
        size += len(raw)
        if not raw.strip():
            continue
        records += 1
        obj = _parse(raw, "assessmentId")
        if isinstance(obj, str):
            found.add([Finding(FindingKind.INVALID_RECORD, None, f"{path.name}:{number}",
                               (("line", raw[:200].decode("utf-8", "replace")),), obj)])
            continue
        aid = obj["assessmentId"]
        if not aid.startswith(prefix):
            continue
        checked += 1
        audit_id, operation = obj.get("auditId"), obj.get("operation")
        before, after = obj.get("statusBefore"), obj.get("statusAfter")
        where = f"{operation} ({audit_id}, line {number})"
        if aid not in statuses:
            found.add([Finding(FindingKind.UNKNOWN_ASSESSMENT, aid, "assessmentId",
                               (("audit", audit_id), ("export", None)), f"{where}: no such assessment in the export")])
        if operation == _RESTORE:
            audited[aid] = after
            continue
        if aid in audited and audited[aid] != before:
            found.add([Finding(FindingKind.ILLEGAL_AUDIT, aid, "sequence",
                               (("previous_after", audited[aid]), ("before", before)),
                               f"{where} does not continue the entry before it")])
        if (before, after) not in allowed:
            found.add([Finding(FindingKind.ILLEGAL_AUDIT, aid, "transition", (("from", before), ("to", after)),
                               f"{where}: the legacy state machine has no such transition")])
        audited[aid] = after if isinstance(after, str) else None
    _against_manifest(entry, sha.hexdigest(), records, size, found)
    return checked
