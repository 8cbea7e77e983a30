"""``migrate cleanup``: the last step of a migration. Once every assessment lives in the store, archive the
legacy service's data, prove the archive readable and complete, and only then remove the migrated
assessments from legacy through its API.

The order is the safety argument, each step only after the one before it held:

1. *Refuse unless it is time*: the final validation (legacy vs store) passed within
   ``validation_max_age``, the flags send every call to the store (``enableAssessmentStore``, 100 %), and
   no flag has changed for ``hold`` (a rollback is a flag change, so it resets the clock).
2. *Archive*: the legacy export (every assessment) and its audit log, streamed into Avro object
   container files (fastavro, deflate), each record with its original JSON line in ``raw``; SHA-256 of
   each file and of the stream of raw lines in ``manifest.json``.
3. *Verify*: read both files back, recompute the digest of the raw lines and the counts; they must equal
   what was written. Only then is the manifest marked ``verified``.
4. *Purge*: the archived assessments the store holds (the migrated ones; an id only legacy has is kept and
   counted), removed from legacy with ``POST /admin/purge`` in batches; idempotent, so an interrupted
   cleanup run again reuses the verified archive (never re-archives a half-purged legacy) and goes on.
5. *Record* what was done in the audit table. Stopping the bridge and the reverse sync is the caller's
   (the CLI stops the local stack's processes); the flags' dual mode, fallback and shadows are switched off.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import httpx

from assessment_store.core import JSON, Settings, StoreUsageError, ValidationError
from assessment_store.projections import connection, fetch_states, record_audit, translate_db_errors

from ._export import _lines
from ._flags import FLAGS_TOPIC, FlagStore, audit_trail, default_actor
from ._legacy_http import LegacyUnavailable
from ._runs import NoRecentPass, require_recent_pass

__all__ = ["CleanupPlan", "CleanupRefused", "CleanupReport", "cleanup_legacy", "plan_cleanup"]

_ASSESSMENT_SCHEMA = fastavro.parse_schema({
    "type": "record", "name": "LegacyAssessment", "namespace": "assessment_store.archive",
    "doc": "One assessment of the legacy export; raw is its JSON line as legacy served it.",
    "fields": [
        {"name": "assessmentId", "type": "string"},
        {"name": "status", "type": ["null", "string"]},
        {"name": "updatedAt", "type": ["null", "string"]},
        {"name": "raw", "type": "string"},
    ],
})
_AUDIT_SCHEMA = fastavro.parse_schema({
    "type": "record", "name": "LegacyAuditEntry", "namespace": "assessment_store.archive",
    "doc": "One entry of the legacy service's audit log; raw is its JSON line as legacy served it.",
    "fields": [
        {"name": "auditId", "type": ["null", "string"]},
        {"name": "assessmentId", "type": ["null", "string"]},
        {"name": "operation", "type": ["null", "string"]},
        {"name": "at", "type": ["null", "string"]},
        {"name": "raw", "type": "string"},
    ],
})
_FILES = {"assessments": ("assessments.avro", "/export", _ASSESSMENT_SCHEMA),
          "audit": ("audit.avro", "/export/audit", _AUDIT_SCHEMA)}


class CleanupRefused(StoreUsageError):
    """It is not time to clean up (``.reasons``: every precondition that does not hold)."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("cleanup refused: " + "; ".join(reasons))


@dataclass(frozen=True)
class CleanupPlan:
    legacy_url: str
    archive_dir: Path
    legacy_assessments: int
    reasons_to_wait: tuple[str, ...]
    """Preconditions that do not hold (empty: the cleanup may run)."""
    reuse_archive: bool
    """A verified archive of an interrupted cleanup is there: it is reused, legacy is not archived again."""
    id_prefix: str = ""
    flags_topic: str = FLAGS_TOPIC


@dataclass(frozen=True)
class ArchivedFile:
    path: Path
    records: int
    sha256: str
    raw_sha256: str
    """SHA-256 of the raw JSON lines in order: what the read-back check recomputes."""


@dataclass(frozen=True)
class CleanupReport:
    plan: CleanupPlan
    dry_run: bool
    archive: dict[str, ArchivedFile] = field(default_factory=dict)
    purged: int = 0
    already_gone: int = 0
    kept_not_in_store: int = 0
    batches: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, JSON]:
        return {
            "dryRun": self.dry_run, "legacyUrl": self.plan.legacy_url, "archiveDir": str(self.plan.archive_dir),
            "idPrefix": self.plan.id_prefix, "flagsTopic": self.plan.flags_topic,
            "legacyAssessments": self.plan.legacy_assessments, "reasonsToWait": list(self.plan.reasons_to_wait),
            "reusedArchive": self.plan.reuse_archive,
            "archive": {k: {"path": str(v.path), "records": v.records, "sha256": v.sha256}
                        for k, v in self.archive.items()},
            "purged": self.purged, "alreadyGone": self.already_gone, "keptNotInStore": self.kept_not_in_store,
            "batches": self.batches, "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def _manifest(archive_dir: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads((archive_dir / "manifest.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


async def plan_cleanup(settings: Settings, legacy_url: str, archive_dir: Path, *, hold: timedelta,
                       validation_max_age: timedelta, id_prefix: str = "",
                       flags_topic: str = FLAGS_TOPIC) -> CleanupPlan:
    """What a cleanup would do, and every precondition that does not hold yet. ``id_prefix`` limits the
    cleanup to the ids starting with it (a staged cleanup; the validation must then cover that prefix)."""
    reasons: list[str] = []
    try:
        await require_recent_pass(settings, validation_max_age, id_prefix=id_prefix)
    except NoRecentPass as e:
        reasons.append(str(e))
    async with FlagStore(settings, topic=flags_topic) as flags:
        current = flags.current()
    if not current.enable_assessment_store or current.migration_percentage < 100:
        reasons.append(f"the flags do not send every call to the store (enableAssessmentStore "
                       f"{current.enable_assessment_store}, migrationPercentage {current.migration_percentage:g})")
    trail = [t for t in await audit_trail(settings)
             if isinstance(t["details"], dict) and t["details"].get("topic", FLAGS_TOPIC) == flags_topic]
    if trail:
        last = trail[-1]["occurredAt"]
        last_at = last if isinstance(last, datetime) else datetime.fromisoformat(str(last))
        held = datetime.now(UTC) - last_at
        if held < hold:
            reasons.append(f"the flags changed {held.total_seconds():.0f} s ago, less than the hold of "
                           f"{hold.total_seconds():.0f} s (a rollback or any change restarts it)")
    manifest = _manifest(archive_dir)
    reuse = bool(manifest and manifest.get("verified") and manifest.get("legacyUrl") == legacy_url.rstrip("/")
                 and manifest.get("idPrefix", "") == id_prefix)
    if manifest is None and archive_dir.exists() and any(archive_dir.iterdir()):
        reasons.append(f"{archive_dir} holds files that are not an archive of this cleanup: choose an empty directory")
    async with httpx.AsyncClient(base_url=legacy_url.rstrip("/"), timeout=30.0) as client:
        try:
            answer = await client.get("/export/counts", params={"idPrefix": id_prefix})
            total = int(answer.json()["total"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            raise LegacyUnavailable(f"legacy GET {legacy_url}/export/counts failed: {e!r}", url=legacy_url) from e
    return CleanupPlan(legacy_url=legacy_url.rstrip("/"), archive_dir=archive_dir, legacy_assessments=total,
                       reasons_to_wait=tuple(reasons), reuse_archive=reuse, id_prefix=id_prefix,
                       flags_topic=flags_topic)


def _avro_record(kind: str, line: str) -> dict[str, Any]:
    try:
        doc = json.loads(line)
    except ValueError as e:
        raise ValidationError(f"legacy {kind}", f"a line is not JSON: {line[:200]!r}") from e
    if not isinstance(doc, dict):
        raise ValidationError(f"legacy {kind}", f"a line is not a JSON object: {line[:200]!r}")

    def text(name: str) -> str | None:
        value = doc.get(name)
        return None if value is None else str(value)

    if kind == "assessments":
        if not isinstance(doc.get("assessmentId"), str):
            raise ValidationError("legacy assessments", f"a record has no assessmentId: {line[:200]!r}")
        return {"assessmentId": doc["assessmentId"], "status": text("status"), "updatedAt": text("updatedAt"),
                "raw": line}
    return {"auditId": text("auditId"), "assessmentId": text("assessmentId"), "operation": text("operation"),
            "at": text("at"), "raw": line}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


async def _archive(client: httpx.AsyncClient, archive_dir: Path, id_prefix: str) -> dict[str, ArchivedFile]:
    archive_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, ArchivedFile] = {}
    for kind, (name, path, schema) in _FILES.items():
        records: list[dict[str, Any]] = []
        raw = hashlib.sha256()
        count = 0
        target = archive_dir / name
        partial = target.with_suffix(".avro.partial")
        with partial.open("wb") as out:
            # Blocks of 10,000 records: memory stays bounded whatever the size of legacy.
            writer = fastavro.write.Writer(out, schema, codec="deflate")
            async for line in _lines(client, str(client.base_url).rstrip("/"), path, {"idPrefix": id_prefix}):
                if not line.strip():
                    continue
                record = _avro_record(kind, line)
                raw.update(line.encode() + b"\n")
                records.append(record)
                count += 1
                if len(records) >= 10_000:
                    for r in records:
                        writer.write(r)
                    writer.flush()
                    records.clear()
            for r in records:
                writer.write(r)
            writer.flush()
        partial.rename(target)
        done[kind] = ArchivedFile(path=target, records=count, sha256=_sha256(target), raw_sha256=raw.hexdigest())
    return done


def _read_back(archived: ArchivedFile) -> tuple[int, str]:
    raw = hashlib.sha256()
    count = 0
    with archived.path.open("rb") as f:
        for record in fastavro.reader(f):
            assert isinstance(record, dict)
            raw.update(str(record["raw"]).encode() + b"\n")
            count += 1
    return count, raw.hexdigest()


def _archived_ids(path: Path) -> Iterator[str]:
    with path.open("rb") as f:
        for record in fastavro.reader(f):
            assert isinstance(record, dict)
            yield str(record["assessmentId"])


def _write_manifest(plan: CleanupPlan, archive: dict[str, ArchivedFile], verified: bool) -> None:
    doc = {"legacyUrl": plan.legacy_url, "idPrefix": plan.id_prefix, "archivedAt": datetime.now(UTC).isoformat(), "verified": verified,
           "files": {k: {"file": v.path.name, "records": v.records, "sha256": v.sha256, "rawSha256": v.raw_sha256}
                     for k, v in archive.items()}}
    tmp = plan.archive_dir / "manifest.json.partial"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.rename(plan.archive_dir / "manifest.json")


def _archive_from_manifest(archive_dir: Path, manifest: dict[str, Any]) -> dict[str, ArchivedFile]:
    files = manifest["files"]
    return {k: ArchivedFile(path=archive_dir / v["file"], records=int(v["records"]), sha256=str(v["sha256"]),
                            raw_sha256=str(v["rawSha256"])) for k, v in files.items()}


async def cleanup_legacy(settings: Settings, legacy_url: str, archive_dir: Path, *, hold: timedelta,
                         validation_max_age: timedelta, dry_run: bool = False, batch_size: int = 1000,
                         actor: str | None = None, id_prefix: str = "", flags_topic: str = FLAGS_TOPIC) -> CleanupReport:
    """Archive, verify, purge (see the module docstring); ``CleanupRefused`` before anything when a
    precondition does not hold; with ``dry_run`` only the plan."""
    if not 1 <= batch_size <= 10_000:
        raise ValidationError("batch_size", f"must be in [1, 10000], got {batch_size}")
    plan = await plan_cleanup(settings, legacy_url, archive_dir, hold=hold, validation_max_age=validation_max_age,
                              id_prefix=id_prefix, flags_topic=flags_topic)
    if dry_run:
        return CleanupReport(plan=plan, dry_run=True)
    if plan.reasons_to_wait:
        raise CleanupRefused(list(plan.reasons_to_wait))
    seconds: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=plan.legacy_url, timeout=httpx.Timeout(300.0, connect=10.0)) as client:
        t0 = time.perf_counter()
        manifest = _manifest(archive_dir)
        if plan.reuse_archive and manifest is not None:
            archive = _archive_from_manifest(archive_dir, manifest)
        else:
            archive = await _archive(client, archive_dir, plan.id_prefix)
            _write_manifest(plan, archive, verified=False)
        seconds["archive"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for kind, archived in archive.items():
            if _sha256(archived.path) != archived.sha256:
                raise ValidationError(f"archive {kind}", f"{archived.path} does not match its SHA-256 in the manifest")
            count, raw = _read_back(archived)
            if (count, raw) != (archived.records, archived.raw_sha256):
                raise ValidationError(f"archive {kind}", f"{archived.path} reads back {count} records (digest {raw[:12]}) "
                                      f"where {archived.records} (digest {archived.raw_sha256[:12]}) were written")
        _write_manifest(plan, archive, verified=True)
        seconds["verify"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        purged = gone = kept = batches = 0
        batch: list[str] = []

        async def purge(ids: list[str]) -> None:
            nonlocal purged, gone, kept, batches
            async with connection(settings) as conn:
                with translate_db_errors("reading which archived assessments the store holds"):
                    in_store = await fetch_states(conn, ids)
            migrated = [i for i in ids if i in in_store]
            kept += len(ids) - len(migrated)
            if not migrated:
                return
            try:
                answer = await client.post("/admin/purge", json={"ids": migrated})
                body = answer.json()
                purged += int(body["purged"])
                gone += int(body["missing"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
                raise LegacyUnavailable(f"legacy POST {plan.legacy_url}/admin/purge failed: {e!r}",
                                        url=plan.legacy_url) from e
            batches += 1

        for assessment_id in _archived_ids(archive["assessments"].path):
            batch.append(assessment_id)
            if len(batch) >= batch_size:
                await purge(batch)
                batch = []
        if batch:
            await purge(batch)
        seconds["purge"] = time.perf_counter() - t0
    report = CleanupReport(plan=plan, dry_run=False, archive=archive, purged=purged, already_gone=gone,
                           kept_not_in_store=kept, batches=batches, seconds=seconds)
    async with FlagStore(settings, topic=flags_topic) as flags:
        # Nothing is left on legacy to serve, compare with, or fall back to.
        await flags.update(actor or default_actor(), enable_dual_mode=False, enable_legacy_fallback=False,
                           enable_shadow_comparison=False)
    async with connection(settings) as conn:
        with translate_db_errors("recording the cleanup"):
            await record_audit(conn, "migration_cleanup", actor or default_actor(), report.to_json())
    return report
