"""`migrate export`, `migrate import-audit`, `migrate validate --before` and `migrate import` (assessment_store.migration)
against the real stack and the Node sample legacy service; the import of a pending assessment keeping legacy's
updatedAt (bridge.plan_import)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from assessment_store import Settings
from assessment_store.bridge import ExportRecord, import_legacy, plan_import
from assessment_store.core import Assessment, Create, State, UpdateProgress
from assessment_store.migration import (
    FindingKind,
    LegacyHttpProcess,
    ValidationVerdict,
    export_legacy,
    import_audit,
    latest_validation,
    legacy_transitions,
    validate_after,
    validate_before,
)
from assessment_store.core import ValidationError
from assessment_store.projections import connect
from assessment_store.stack import settings_env
from assessment_store.testing import eventually
from tests.test_migrate_validate import T0, _at, _record, _restore, legacy_http  # noqa: F401 (legacy_http: fixture)


def test_legacy_transitions_are_the_store_state_machine_in_legacy_statuses() -> None:
    """The audit check's transitions: creation to pending, progress while pending/processing, and the store's moves."""
    assert legacy_transitions() == {
        (None, "pending"), ("pending", "pending"), ("processing", "processing"), ("pending", "processing"),
        ("processing", "completed"), ("pending", "failed"), ("processing", "failed"), ("pending", "cancelled"),
        ("processing", "cancelled"), ("failed", "pending"),
    }


def test_a_pending_line_updated_after_creation_plans_a_progress_step_at_updated_at() -> None:
    """Pending with updatedAt after timestamp: Create, then UpdateProgress(legacy progress/message) stamped updatedAt;
    equal times plan the Create alone; a store row at an older updated_at gets only the progress step."""
    rec = ExportRecord("u-1", State.PENDING, 0, None, {"q": 1}, None, None, None,
                       created_at=T0, updated_at=T0 + timedelta(seconds=90))
    plan = plan_import(rec, None, max_json_bytes=1_000_000)
    assert not isinstance(plan, type(None)) and hasattr(plan, "commands")
    kinds = [type(c) for c in plan.commands]  # type: ignore[union-attr]
    assert kinds == [Create, UpdateProgress]
    step = plan.commands[1]  # type: ignore[union-attr]
    assert isinstance(step, UpdateProgress) and (step.progress, step.message) == (0, None)
    assert rec.occurred_at(step) == T0 + timedelta(seconds=90)
    same = plan_import(ExportRecord("u-1", State.PENDING, 0, None, None, None, None, None, created_at=T0, updated_at=T0),
                       None, max_json_bytes=1_000_000)
    assert [type(c) for c in same.commands] == [Create]  # type: ignore[union-attr]
    current = Assessment("u-1", State.PENDING, 1, 0, None, T0, T0, {"q": 1})
    again = plan_import(rec, current, max_json_bytes=1_000_000)
    assert [c.command_id for c in again.commands] == [step.command_id]  # type: ignore[union-attr]
    done = Assessment("u-1", State.PENDING, 2, 0, None, T0, T0 + timedelta(seconds=90), {"q": 1})
    assert plan_import(rec, done, max_json_bytes=1_000_000).commands == ()  # type: ignore[union-attr]


# --- against the stack and the legacy service ---------------------------------------------------


def _records(p: str, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        match i % 5:
            case 0:
                out.append(_record(f"{p}{i}", "pending", request={"i": i}, created=i, updated=i + (7 if i % 10 else 0)))
            case 1:
                out.append(_record(f"{p}{i}", "processing", progress=i % 100, message=f"m{i}", request=[i], created=i,
                                   updated=i + 2))
            case 2:
                out.append(_record(f"{p}{i}", "completed", progress=100, request={"i": i}, result={"score": i},
                                   created=i, updated=i + 3, duration=3000))
            case 3:
                out.append(_record(f"{p}{i}", "failed", progress=10, message="ten", error=f"boom {i}", created=i,
                                   updated=i + 4, duration=400))
            case _:
                out.append(_record(f"{p}{i}", "cancelled", request=None, created=i, updated=i + 5, duration=5))
    return out


async def _drive(url: str, p: str) -> None:
    """A few assessments changed through legacy's HTTP face by named actors: audit entries of every operation."""
    async with httpx.AsyncClient(base_url=url) as c:
        for i, end in enumerate(("complete", "fail", "cancel", None)):
            aid = f"{p}live-{i}"
            assert (await c.post("/assessments", json={"assessmentId": aid, "request": {"live": i}},
                                 headers={"x-actor": "alice"})).status_code == 201
            assert (await c.post(f"/assessments/{aid}/start", headers={"x-actor": "bob"})).status_code == 200
            assert (await c.post(f"/assessments/{aid}/progress", json={"progress": 40, "message": "forty"})).status_code == 200
            if end is not None:
                body = {"result": {"ok": True}} if end == "complete" else {"error": "bad"} if end == "fail" else {}
                assert (await c.post(f"/assessments/{aid}/{end}", json=body, headers={"x-actor": "carol"})).status_code == 200


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.stack
async def test_export_writes_both_files_and_a_manifest_with_right_counts_and_sha256(
        stack_settings: Settings, legacy_http: LegacyHttpProcess, tmp_path: Path) -> None:
    """assessments.jsonl holds every record, audit.jsonl every change with its actor, and the manifest's counts, sizes,
    SHA-256 and time range match the files; a non-empty directory is refused unless overwrite."""
    p = f"exp-{uuid.uuid4().hex[:8]}-"
    seeded = _records(p, 25)
    await _restore(legacy_http.url, seeded)
    await _drive(legacy_http.url, p)
    out = tmp_path / "export"
    manifest = await export_legacy(stack_settings, legacy_http.url, out, id_prefix=p, progress=False)
    lines = [json.loads(x) for x in (out / "assessments.jsonl").read_text().splitlines()]
    audit = [json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines()]
    assert len(lines) == 29 and {r["assessmentId"] for r in lines} >= {r["assessmentId"] for r in seeded}
    assert lines[0] == seeded[0]
    assert len(audit) == 25 + 4 * 3 + 3  # a restore each, create/start/progress each, three endings
    assert [(e["operation"], e["actor"], e["statusBefore"], e["statusAfter"]) for e in audit
            if e["assessmentId"] == f"{p}live-0"] == [
        ("create", "alice", None, "pending"), ("start", "bob", "pending", "processing"),
        ("progress", "legacy-service", "processing", "processing"), ("complete", "carol", "processing", "completed")]
    written = json.loads((out / "manifest.json").read_text())
    assert written["counts"] == {"assessments": 29, "audit": 40, "by_status": {
        "cancelled": 6, "completed": 6, "failed": 6, "pending": 5, "processing": 6}}
    for name, n in (("assessments.jsonl", 29), ("audit.jsonl", 40)):
        f = written["files"][name]
        assert (f["records"], f["bytes"], f["sha256"]) == (n, (out / name).stat().st_size, _sha(out / name))
    assert written["legacy_url"] == legacy_http.url and written["id_prefix"] == p and written["exported_at"]
    assert written["files"]["assessments.jsonl"]["time_range"]["from"] == _at(0)
    assert written["time_range"]["to"] == max((e["at"] for e in audit), key=str)
    assert manifest.assessments.sha256 == _sha(out / "assessments.jsonl")

    with pytest.raises(ValidationError, match="not empty"):
        await export_legacy(stack_settings, legacy_http.url, out, id_prefix=p, progress=False)
    again = await export_legacy(stack_settings, legacy_http.url, out, id_prefix=p, progress=False, overwrite=True)
    assert again.assessments.sha256 == manifest.assessments.sha256 and again.audit.records == 40


async def _audit_rows(settings: Settings, p: str) -> int:
    conn = await connect(settings)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM public.migration_audit WHERE legacy_audit_id IS NOT NULL"
            " AND details->>'assessmentId' LIKE $1 || '%'", p))
    finally:
        await conn.close()


@pytest.mark.stack
async def test_importing_the_audit_log_twice_adds_nothing_the_second_time(
        stack_settings: Settings, legacy_http: LegacyHttpProcess, tmp_path: Path) -> None:
    """import-audit stores each legacy entry once (actor, operation, time kept); a second import adds none."""
    p = f"aud-{uuid.uuid4().hex[:8]}-"
    await _restore(legacy_http.url, _records(p, 10))
    await _drive(legacy_http.url, p)
    await export_legacy(stack_settings, legacy_http.url, tmp_path / "e", id_prefix=p, progress=False)
    first = await import_audit(stack_settings, tmp_path / "e", batch_size=7)
    assert (first.imported, first.already_imported, first.invalid) == (25, 0, 0)
    second = await import_audit(stack_settings, tmp_path / "e")
    assert (second.imported, second.already_imported) == (0, 25)
    assert await _audit_rows(stack_settings, p) == 25
    conn = await connect(stack_settings)
    try:
        row = await conn.fetchrow(
            "SELECT operation, actor, occurred_at FROM public.migration_audit WHERE details->>'assessmentId' = $1"
            " AND details->>'operation' = 'start'", f"{p}live-1")
    finally:
        await conn.close()
    assert (row["operation"], row["actor"]) == ("legacy.start", "bob")


@pytest.mark.stack
async def test_before_validation_finds_exactly_the_planted_defects_and_passes_a_clean_export(
        stack_settings: Settings, legacy_http: LegacyHttpProcess, tmp_path: Path) -> None:
    """A clean export passes; then a duplicate id, an illegal audit transition, an audit entry of an unknown
    assessment, an audit file unlike its manifest and a record changed on legacy since are each found, and nothing else."""
    p = f"bef-{uuid.uuid4().hex[:8]}-"
    await _restore(legacy_http.url, _records(p, 30))
    await _drive(legacy_http.url, p)
    out = tmp_path / "e"
    await export_legacy(stack_settings, legacy_http.url, out, id_prefix=p, progress=False)
    clean = await validate_before(stack_settings, out, buckets=16)
    assert clean.verdict is ValidationVerdict.PASS, clean.findings
    assert (clean.legacy_count, clean.store_count, clean.histories_checked) == (34, 34, 45)

    records = out / "assessments.jsonl"
    first = records.read_text().splitlines()[2]
    with records.open("a") as f:
        f.write(first + "\n")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["assessments.jsonl"].update(records=35, bytes=records.stat().st_size, sha256=_sha(records))
    (out / "manifest.json").write_text(json.dumps(manifest))
    with (out / "audit.jsonl").open("a") as f:
        for entry in ({"auditId": "planted:1", "seq": 1000, "at": _at(100), "actor": "x", "operation": "start",
                       "assessmentId": f"{p}live-0", "statusBefore": "completed", "statusAfter": "processing"},
                      {"auditId": "planted:2", "seq": 1001, "at": _at(101), "actor": "x", "operation": "create",
                       "assessmentId": f"{p}ghost", "statusBefore": None, "statusAfter": "pending"}):
            f.write(json.dumps(entry) + "\n")
    async with httpx.AsyncClient(base_url=legacy_http.url) as c:
        assert (await c.post(f"/assessments/{p}1/progress", json={"progress": 77, "message": "later"})).status_code == 200

    report = await validate_before(stack_settings, out, buckets=16)
    found = {(f.kind, f.assessment_id, f.field) for f in report.findings}
    dup = json.loads(first)["assessmentId"]
    assert found == {
        (FindingKind.DUPLICATE, dup, "assessmentId"),
        (FindingKind.ILLEGAL_AUDIT, f"{p}live-0", "transition"),
        (FindingKind.UNKNOWN_ASSESSMENT, f"{p}ghost", "assessmentId"),
        (FindingKind.CHECKSUM_MISMATCH, None, "audit.jsonl:sha256"),
        (FindingKind.CHECKSUM_MISMATCH, None, "audit.jsonl:records"),
        (FindingKind.CHECKSUM_MISMATCH, None, "audit.jsonl:bytes"),
        (FindingKind.CORRUPTED, f"{p}1", "progress"),
        (FindingKind.CORRUPTED, f"{p}1", "message"),
        (FindingKind.CORRUPTED, f"{p}1", "updatedAt"),
    }, report.findings
    values = {(f.assessment_id, f.field): dict(f.values) for f in report.findings}
    assert values[(f"{p}1", "progress")] == {"legacy": 77, "export": 1}
    assert values[(f"{p}live-0", "transition")] == {"from": "completed", "to": "processing"}
    assert report.verdict is ValidationVerdict.FAIL and report.buckets_differing == 1
    latest = await latest_validation(stack_settings, kind="before", id_prefix=p)
    assert latest is not None and (latest.run_id, latest.verdict) == (report.run_id, ValidationVerdict.FAIL)

    env = {**os.environ, **settings_env(stack_settings)}
    r = subprocess.run([sys.executable, "-m", "assessment_store.cli", "migrate", "validate", "--before", str(out),
                        "--json", "--buckets", "16", "--max-findings", "1"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    body = json.loads(r.stdout)
    assert body["verdict"] == "fail" and body["total_findings"] == 9 and body["totals"]["checksum_mismatch"] == 3
    assert len([f for f in body["findings"] if f["kind"] == "checksum_mismatch"]) == 1
    assert body["recommendations"]


@pytest.mark.stack
async def test_a_pending_assessment_imports_with_legacy_updated_at_and_validates(
        stack_settings: Settings, legacy_http: LegacyHttpProcess, tmp_path: Path) -> None:
    """A pending legacy record whose updatedAt is after its timestamp is in the store with updated_at == updatedAt
    (created_at == timestamp), and the after-validation passes on it."""
    p = f"upd-{uuid.uuid4().hex[:8]}-"
    recs = [_record(f"{p}a", "pending", request={"n": 1}, created=0, updated=73),
            _record(f"{p}b", "pending", progress=20, message="twenty", created=0, updated=5),
            _record(f"{p}c", "pending", created=3, updated=3)]
    await _restore(legacy_http.url, recs)
    path = tmp_path / "export.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    report = await import_legacy(stack_settings, path, progress=False)
    assert report.rejected == 0 and report.refused == 0

    async def rows() -> dict[str, tuple[Any, Any]]:
        conn = await connect(stack_settings)
        try:
            got = await conn.fetch("SELECT assessment_id, created_at, updated_at FROM projection.assessments"
                                   " WHERE assessment_id LIKE $1 || '%'", p)
        finally:
            await conn.close()
        return {r["assessment_id"]: (r["created_at"], r["updated_at"]) for r in got}

    got = await eventually(rows, lambda g: len(g) == 3, timeout_s=30, what="the three imported")
    assert got[f"{p}a"] == (T0, T0 + timedelta(seconds=73))
    assert got[f"{p}b"] == (T0, T0 + timedelta(seconds=5))
    assert got[f"{p}c"] == (T0 + timedelta(seconds=3), T0 + timedelta(seconds=3))
    validation = await validate_after(stack_settings, legacy_http.url, id_prefix=p, buckets=16, deep=True)
    assert validation.verdict is ValidationVerdict.PASS, validation.findings


@pytest.mark.stack
async def test_migrate_import_end_to_end_loses_nothing_and_validates(
        stack_settings: Settings, legacy_http: LegacyHttpProcess, tmp_path: Path) -> None:
    """export -> validate --before -> import (two batches of 1,000 and the audit log) through the CLI: the final
    validation passes with nothing lost or different, and running the import again changes nothing."""
    p = f"e2e-{uuid.uuid4().hex[:8]}-"
    await _restore(legacy_http.url, _records(p, 1100))
    await _drive(legacy_http.url, p)
    env = {**os.environ, **settings_env(stack_settings)}
    out = tmp_path / "export"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "assessment_store.cli", "migrate", *args], capture_output=True,
                              text=True, env=env, timeout=600)

    r = cli("export", "--legacy-url", legacy_http.url, "--out", str(out), "--id-prefix", p, "--json")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads(r.stdout)["counts"]["assessments"] == 1104
    r = cli("export", "--legacy-url", legacy_http.url, "--out", str(out), "--id-prefix", p)
    assert r.returncode == 65, r.stdout + r.stderr
    r = cli("validate", "--before", str(out), "--json", "--buckets", "64")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    r = cli("import", str(out), "--json", "--buckets", "64")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["ok"] and summary["assessments"]["lines"] == 1104 and summary["assessments"]["rejected"] == 0
    # The four driven through legacy's HTTP face also reach the store through the tap and the live bridge.
    a = summary["assessments"]
    assert a["imported"] + a["up_to_date"] + a["store_ahead"] == 1104 and a["imported"] >= 1100
    assert summary["audit"]["imported"] == 1100 + 15
    v = summary["validation"]
    assert v["verdict"] == "pass" and v["total_findings"] == 0 and (v["legacy_count"], v["store_count"]) == (1104, 1104)
    assert v["totals"]["lost"] == 0 and v["totals"]["corrupted"] == 0

    r = cli("import", str(out), "--json", "--buckets", "64")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    again = json.loads(r.stdout)
    assert again["assessments"]["already_done"] and again["audit"]["imported"] == 0
    assert again["audit"]["already_imported"] == 1115
    r = cli("import-audit", str(out))
    assert r.returncode == 0 and "0 audit entries imported" in r.stdout, r.stdout + r.stderr
