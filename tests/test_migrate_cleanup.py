"""`migrate cleanup` against the real stack and the Node sample legacy service: refused until the final
validation passed and the flags held at 100 %, then a verified Avro archive of legacy's assessments and
audit log, the migrated assessments removed from legacy (an id the store lacks kept), resumable."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import fastavro
import httpx
import pytest

from assessment_store import Settings
from assessment_store.migration import (
    CleanupRefused,
    FlagStore,
    LegacyHttpProcess,
    ValidationVerdict,
    cleanup_legacy,
    validate_after,
)
from assessment_store.projections import connection
from tests.test_migrate_validate import _import, _record, _restore, legacy_http  # noqa: F401 (legacy_http: fixture)

HOUR = timedelta(hours=1)


async def _legacy_count(url: str, prefix: str) -> int:
    async with httpx.AsyncClient(base_url=url) as c:
        return int((await c.get("/export/counts", params={"idPrefix": prefix})).json()["total"])


def _avro(path: Path) -> list[dict[str, Any]]:
    with path.open("rb") as f:
        return [dict(r) for r in fastavro.reader(f)]  # type: ignore[arg-type]


@pytest.mark.stack
async def test_cleanup_archives_verifies_and_removes_only_what_was_migrated(
        stack_settings: Settings, legacy_http: LegacyHttpProcess, tmp_path: Path) -> None:
    """Refused before the validation and the 100 % flags; then archives every record and audit entry (read back
    equal to what legacy served), removes the migrated ones from legacy, keeps the one the store lacks, turns dual
    mode off, records itself; run again, it reuses the archive and removes nothing twice."""
    s = stack_settings
    p = f"cleanup-{uuid.uuid4().hex[:8]}-"
    flags_topic = f"assessments.migration-flags.cleanup-{uuid.uuid4().hex[:8]}"
    records = [_record(f"{p}{i}", "completed", progress=100, request={"i": i}, result={"score": i}, created=i,
                       updated=i + 1, duration=1000) for i in range(30)]
    await _restore(legacy_http.url, records)
    await _import(s, tmp_path / "export.jsonl", records)
    archive_dir = tmp_path / "archive"

    with pytest.raises(CleanupRefused) as refused:
        await cleanup_legacy(s, legacy_http.url, archive_dir, hold=timedelta(0), validation_max_age=HOUR,
                             id_prefix=p, flags_topic=flags_topic)
    assert any("validation" in r for r in refused.value.reasons), refused.value.reasons
    assert any("do not send every call to the store" in r for r in refused.value.reasons), refused.value.reasons
    assert not archive_dir.exists() and await _legacy_count(legacy_http.url, p) == 30

    report = await validate_after(s, legacy_http.url, id_prefix=p, buckets=64)
    assert report.verdict is ValidationVerdict.PASS, report.findings
    async with FlagStore(s, topic=flags_topic) as flags:
        await flags.update("cleanup-test", enable_assessment_store=True, migration_percentage=100)
    plan_only = await cleanup_legacy(s, legacy_http.url, archive_dir, hold=HOUR, validation_max_age=HOUR,
                                     id_prefix=p, flags_topic=flags_topic, dry_run=True)
    assert plan_only.dry_run and any("less than the hold" in r for r in plan_only.plan.reasons_to_wait)
    assert not archive_dir.exists()

    # An assessment only legacy holds (created after the validation): archived, but not removed.
    await _restore(legacy_http.url, [_record(f"{p}legacy-only", "pending", request={"late": True})])
    done = await cleanup_legacy(s, legacy_http.url, archive_dir, hold=timedelta(0), validation_max_age=HOUR,
                                id_prefix=p, flags_topic=flags_topic, batch_size=7)
    assert (done.purged, done.already_gone, done.kept_not_in_store, done.batches) == (30, 0, 1, 5)
    assert await _legacy_count(legacy_http.url, p) == 1

    archived = _avro(archive_dir / "assessments.avro")
    assert sorted(r["assessmentId"] for r in archived) == sorted([r["assessmentId"] for r in records] + [f"{p}legacy-only"])
    by_id = {r["assessmentId"]: json.loads(r["raw"]) for r in archived}
    assert by_id[f"{p}3"]["result"] == {"score": 3} and by_id[f"{p}3"]["duration"] == 1000
    audit = _avro(archive_dir / "audit.avro")
    assert {r["assessmentId"] for r in audit} >= {r["assessmentId"] for r in records}
    manifest = json.loads((archive_dir / "manifest.json").read_text())
    assert manifest["verified"] is True and manifest["files"]["assessments"]["records"] == 31
    async with FlagStore(s, topic=flags_topic) as flags:
        now = flags.current()
    assert (now.enable_dual_mode, now.enable_legacy_fallback, now.enable_shadow_comparison) == (False, False, False)
    async with connection(s) as conn:
        row = await conn.fetchrow("SELECT details FROM public.migration_audit WHERE operation = 'migration_cleanup'"
                                  " ORDER BY id DESC LIMIT 1")
    assert row is not None and row["details"]["purged"] == 30

    again = await cleanup_legacy(s, legacy_http.url, archive_dir, hold=timedelta(0), validation_max_age=HOUR,
                                 id_prefix=p, flags_topic=flags_topic)
    assert again.plan.reuse_archive and (again.purged, again.already_gone, again.kept_not_in_store) == (0, 30, 1)
    assert await _legacy_count(legacy_http.url, p) == 1
