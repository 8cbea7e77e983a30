"""`assessment-store migrate validate` (assessment_store.migration): the canonical form shared by Python, Node
and PostgreSQL, and the legacy-vs-store validation against the real stack and the Node sample legacy service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from assessment_store import Settings, State
from assessment_store.bridge import import_legacy
from assessment_store.migration import (
    FindingKind,
    HttpLegacyBackend,
    LegacyHttpProcess,
    ValidationVerdict,
    assessment_from_legacy_record,
    bucket_of,
    canonical_legacy,
    compare_rows,
    id_hash,
    latest_validation,
    reverse_topic_spec,
    row_hash,
    start_legacy_http,
    validate_after,
)
from assessment_store.projections import canonical_texts, connect
from assessment_store.stack import settings_env
from assessment_store.streams import ensure_topics
from assessment_store.testing import eventually

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "migration" / "canonical_vectors.json").read_text())
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _at(seconds: float) -> str:
    return _iso(T0 + timedelta(seconds=seconds))


def test_python_computes_every_canonical_vector() -> None:
    """Python gives each vector's canonical text, row hash and id hash (the Node suite checks the same file)."""
    for v in VECTORS["vectors"]:
        text = canonical_legacy(v["record"])
        assert text == v["canonical"], v["record"]["assessmentId"]
        assert f"{row_hash(text):016x}" == v["rowHash"]
        assert id_hash(v["record"]["assessmentId"]) == v["idHash"]
        assert bucket_of(v["record"]["assessmentId"], 4096) == v["bucket4096"]
    sums: dict[int, list[int]] = {}
    by_id = {v["record"]["assessmentId"]: v["record"] for v in VECTORS["vectors"]}
    n = VECTORS["checksums"]["buckets"]
    for aid in VECTORS["checksums"]["records"]:
        sums.setdefault(bucket_of(aid, n), []).append(row_hash(canonical_legacy(by_id[aid])))
    got = [[b, len(h), f"{sum(h) % (1 << 64):016x}"] for b, h in sorted(sums.items())]
    assert got == VECTORS["checksums"]["checksums"]


def test_compare_rows_reports_legacy_duplicates_and_treats_2_and_2_0_alike() -> None:
    """An id legacy lists twice is one duplicate finding; 2 vs 2.0 and a cancellation's duration are no difference."""
    legacy = {"assessmentId": "d-1", "status": "cancelled", "progress": 0, "message": None, "request": {"x": 2},
              "result": None, "error": None, "timestamp": _at(0), "updatedAt": _at(1), "duration": 1000}
    store = assessment_from_legacy_record({**legacy, "request": {"x": 2.0}, "duration": None})
    findings = list(compare_rows([legacy, dict(legacy)], [store]))
    assert [(f.kind, f.assessment_id, dict(f.values)["legacy_records"]) for f in findings] == [
        (FindingKind.DUPLICATE, "d-1", 2)]


@pytest.mark.stack
async def test_postgres_computes_the_canonical_vectors(stack_settings: Settings) -> None:
    """PostgreSQL's jsonb_build_array text is each storable vector's canonical text, byte for byte."""
    storable = [v for v in VECTORS["vectors"]
                if isinstance(v["record"].get("progress"), int) and v["record"].get("timestamp", "").startswith("2")
                and isinstance(v["record"].get("updatedAt"), str)]
    assert len(storable) >= 6
    conn = await connect(stack_settings)
    try:
        texts = await canonical_texts(conn, [assessment_from_legacy_record(v["record"]) for v in storable])
    finally:
        await conn.close()
    assert texts == [v["canonical"] for v in storable]


def test_node_export_endpoints_suite_passes() -> None:
    """The Node unit tests of the canonical form and the export endpoints (bridge/node/test/export.test.js) pass."""
    r = subprocess.run(["node", "--test", "test/export.test.js"], cwd=ROOT / "bridge" / "node", capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "# fail 0" in r.stdout


# --- against the stack and the legacy service ---------------------------------------------------


@pytest.fixture
async def legacy_http(stack_settings: Settings, tmp_path: Path) -> AsyncIterator[LegacyHttpProcess]:
    """The Node sample legacy service behind HTTP, tapping into the session's legacy topic."""
    run = uuid.uuid4().hex[:8]
    await ensure_topics(stack_settings, [reverse_topic_spec(stack_settings)])
    legacy = await start_legacy_http(stack_settings, group=f"legacy-validate-{run}", emitter_id=f"legacy-validate-{run}",
                                     stderr_path=tmp_path / "legacy-http.stderr")
    try:
        yield legacy
    finally:
        await legacy.stop()


def _record(aid: str, status: str, *, progress: int = 0, message: str | None = None, request: Any = None,
            result: Any = None, error: str | None = None, created: float = 0, updated: float = 0,
            duration: int | None = None) -> dict[str, Any]:
    return {"assessmentId": aid, "status": status, "progress": progress, "message": message, "request": request,
            "result": result, "error": error, "timestamp": _at(created), "updatedAt": _at(updated), "duration": duration}


async def _restore(url: str, records: list[dict[str, Any]]) -> None:
    body = "".join(json.dumps(r) + "\n" for r in records)
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{url}/snapshot", content=body.encode())
    assert answer.status_code == 200 and answer.json()["invalid"] == 0, answer.text


async def _import(settings: Settings, path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = await import_legacy(settings, path, progress=False)
    assert report.rejected == 0, report
    ids = [r["assessmentId"] for r in records]

    async def projected() -> int:
        conn = await connect(settings)
        try:
            return int(await conn.fetchval(
                "SELECT count(*) FROM projection.assessments WHERE assessment_id = ANY($1::text[])", ids))
        finally:
            await conn.close()

    await eventually(projected, lambda n: n == len(ids), timeout_s=30, what="the imported assessments projected")


async def _plant_event(settings: Settings, aid: str, type_: str, payload: dict[str, Any],
                       causation: str | None = None) -> None:
    """Append an event to a history straight in PostgreSQL, as a writer bypassing the processor would, and move
    the projected row along as the projector would fold it (same time, so no compared field changes)."""
    conn = await connect(settings)
    try:
        async with conn.transaction():
            last = await conn.fetchrow(
                "SELECT version, occurred_at, causation_id FROM projection.assessment_events WHERE assessment_id = $1"
                " ORDER BY version DESC LIMIT 1", aid)
            event_id = uuid.uuid4()
            await conn.execute(
                "INSERT INTO projection.assessment_events (assessment_id, version, event_id, type, occurred_at,"
                " recorded_at, source, causation_id, payload, kafka_topic, kafka_partition, kafka_offset)"
                " VALUES ($1, $2, $3, $4, $5, now(), 'store', $6, $7::text::jsonb, 'planted', 0, 0)",
                aid, last["version"] + 1, event_id, type_, last["occurred_at"],
                causation if causation is not None else last["causation_id"], json.dumps(payload))
            await conn.execute("UPDATE projection.assessments SET version = version + 1, last_event_id = $2"
                               " WHERE assessment_id = $1", aid, event_id)
    finally:
        await conn.close()


@pytest.mark.stack
async def test_planted_defects_are_found_exactly(stack_settings: Settings, legacy_http: LegacyHttpProcess,
                                                 tmp_path: Path) -> None:
    """Lost, extra, changed fields, a count mismatch, a duplicate command, an illegal transition and a projection row
    unlike its fold are each found, with both values, and nothing else; the failing run is recorded."""
    p = f"planted-{uuid.uuid4().hex[:8]}-"
    same = [
        _record(f"{p}pending", "pending", request={"n": 1}),
        _record(f"{p}processing", "processing", progress=30, message="thirty", request=[1, 2], updated=2),
        _record(f"{p}completed", "completed", progress=100, request={"q": "é ✓"}, result={"score": 7, "f": 0.5},
                updated=3, duration=1234),
        _record(f"{p}failed", "failed", progress=20, message="twenty", error="boom", updated=4, duration=99),
        _record(f"{p}cancelled", "cancelled", request={"deep": {"er": [{}, []]}}, updated=5, duration=500),
    ]
    changed_legacy = [
        _record(f"{p}changed-1", "completed", progress=100, message="done", result={"score": 7}, updated=6,
                duration=10),
        _record(f"{p}changed-2", "processing", progress=50, message="half", updated=7),
        _record(f"{p}changed-3", "processing", created=1, updated=8),
    ]
    changed_store = [
        {**changed_legacy[0], "result": {"score": 8}, "message": "done!"},
        {**changed_legacy[1], "progress": 40},
        {**changed_legacy[2], "timestamp": _at(4)},
    ]
    lost = [_record(f"{p}lost-1", "pending"), _record(f"{p}lost-2", "completed", progress=100, result=1, duration=5)]
    extra = [_record(f"{p}extra-1", "failed", error="store only", duration=3)]
    await _restore(legacy_http.url, same + changed_legacy + lost)
    await _import(stack_settings, tmp_path / "export.jsonl", same + changed_store + extra)

    # The defects below are written behind the projector's back into the session's shared projection;
    # the finally block puts the rows back as the log folds them, so that later tests (a replay
    # compares the projection with a rebuild from the log) see a projection equal to its log.
    planted_rows = await _projected_rows(stack_settings, [f"{p}completed", f"{p}processing", f"{p}pending"])
    try:
        # Defects inside the store: a progress event after completion (illegal), a command applied twice
        # (duplicate), and a projected row edited behind the projector's back (unlike its fold).
        await _plant_event(stack_settings, f"{p}completed", "ProgressUpdated", {"progress": 100, "message": None},
                           causation=f"planted-{uuid.uuid4()}")
        await _plant_event(stack_settings, f"{p}processing", "ProgressUpdated", {"progress": 30, "message": "thirty"})
        conn = await connect(stack_settings)
        try:
            await conn.execute("UPDATE projection.assessments SET retry_count = 3 WHERE assessment_id = $1", f"{p}pending")
        finally:
            await conn.close()


        report = await validate_after(stack_settings, legacy_http.url, id_prefix=p, buckets=64, deep=True)
        found = {(f.kind, f.assessment_id, f.field) for f in report.findings}
        assert found == {
            (FindingKind.COUNT_MISMATCH, None, "count"),
            (FindingKind.LOST, f"{p}lost-1", None),
            (FindingKind.LOST, f"{p}lost-2", None),
            (FindingKind.EXTRA, f"{p}extra-1", None),
            (FindingKind.CORRUPTED, f"{p}changed-1", "result"),
            (FindingKind.CORRUPTED, f"{p}changed-1", "message"),
            (FindingKind.CORRUPTED, f"{p}changed-2", "progress"),
            (FindingKind.CORRUPTED, f"{p}changed-3", "timestamp"),
            (FindingKind.DUPLICATE, f"{p}processing", "command"),
            (FindingKind.ILLEGAL_HISTORY, f"{p}completed", "transition"),
            (FindingKind.PROJECTION_MISMATCH, f"{p}pending", "retry_count"),
        }, [f for f in report.findings]
        values = {(f.assessment_id, f.field): dict(f.values) for f in report.findings}
        assert values[(f"{p}changed-1", "result")] == {"legacy": {"score": 7}, "store": {"score": 8}}
        assert values[(f"{p}changed-2", "progress")] == {"legacy": 50, "store": 40}
        assert values[(None, "count")] == {"legacy": 10, "store": 9}
        assert values[(f"{p}pending", "retry_count")] == {"projection": 3, "fold": 0}
        assert report.verdict is ValidationVerdict.FAIL and report.total_findings == 11
        assert (report.legacy_count, report.store_count) == (10, 9)
        latest = await latest_validation(stack_settings, id_prefix=p)
        assert latest is not None and (latest.run_id, latest.verdict) == (report.run_id, ValidationVerdict.FAIL)
        assert latest.totals["corrupted"] == 4

        capped = await validate_after(stack_settings, legacy_http.url, id_prefix=p, max_findings=1, deep=True, record=False)
        assert capped.totals == report.totals
        assert len([f for f in capped.findings if f.kind is FindingKind.CORRUPTED]) == 1
    finally:
        await _unplant(stack_settings, planted_rows)


async def _projected_rows(settings: Settings, ids: list[str]) -> list[dict[str, Any]]:
    conn = await connect(settings)
    try:
        rows = await conn.fetch("SELECT assessment_id, version, last_event_id, retry_count FROM projection.assessments"
                                " WHERE assessment_id = ANY($1::text[])", ids)
        return [dict(r) for r in rows]
    finally:
        await conn.close()


async def _unplant(settings: Settings, rows: list[dict[str, Any]]) -> None:
    """Remove the planted events and restore the planted rows' columns (what the projector had folded)."""
    conn = await connect(settings)
    try:
        async with conn.transaction():
            for r in rows:
                await conn.execute("DELETE FROM projection.assessment_events WHERE assessment_id = $1"
                                   " AND kafka_topic = 'planted'", r["assessment_id"])
                await conn.execute("UPDATE projection.assessments SET version = $2, last_event_id = $3, retry_count = $4"
                                   " WHERE assessment_id = $1", r["assessment_id"], r["version"], r["last_event_id"],
                                   r["retry_count"])
    finally:
        await conn.close()


@pytest.mark.stack
async def test_a_clean_migration_through_the_bridge_passes(stack_settings: Settings,
                                                           legacy_http: LegacyHttpProcess) -> None:
    """Assessments driven through legacy and carried into the store by the tap and the bridge validate clean
    (exit 0, nothing found); the CLI's --json says the same, and the pass is the latest run."""
    p = f"clean-{uuid.uuid4().hex[:8]}-"
    ids = [f"{p}{i}" for i in range(40)]
    async with HttpLegacyBackend(legacy_http.url) as legacy:
        for i, aid in enumerate(ids):
            await legacy.create_assessment({"i": i, "tags": ["a", "é"], "w": i / 4}, assessment_id=aid)
            if i % 5 == 0:
                continue  # pending
            await legacy.start_assessment(aid)
            if i % 5 >= 2:
                await legacy.update_progress(aid, 10 * (i % 10), f"step {i}")
            match i % 5:
                case 2:
                    await legacy.complete_assessment(aid, {"score": i, "ratio": i / 3})
                case 3:
                    await legacy.fail_assessment(aid, f"boom {i}")
                case 4:
                    await legacy.cancel_assessment(aid)
        want = {aid: (await legacy.get_state(aid)) for aid in ids}

    async def store_states() -> dict[str, tuple[str, int]]:
        conn = await connect(stack_settings)
        try:
            rows = await conn.fetch("SELECT assessment_id, state, version FROM projection.assessments"
                                    " WHERE assessment_id = ANY($1::text[])", ids)
        finally:
            await conn.close()
        return {r["assessment_id"]: (r["state"], r["version"]) for r in rows}

    await eventually(store_states, lambda got: got == {a: (s.state.value, s.version) for a, s in want.items()},
                     timeout_s=60, what="the bridge carried every legacy assessment into the store")
    assert {s.state for s in want.values()} == set(State)

    report = await validate_after(stack_settings, legacy_http.url, id_prefix=p, buckets=16)
    assert report.verdict is ValidationVerdict.PASS, report.findings
    assert (report.legacy_count, report.store_count, report.buckets_differing) == (40, 40, 0)
    assert report.histories_checked > 0

    env = {**os.environ, **settings_env(stack_settings)}
    r = subprocess.run([sys.executable, "-m", "assessment_store.cli", "migrate", "validate", "--legacy-url",
                        legacy_http.url, "--json", "--id-prefix", p, "--deep"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["verdict"] == "pass" and out["total_findings"] == 0 and out["histories_checked"] == 40
    latest = await latest_validation(stack_settings, id_prefix=p)
    assert latest is not None and latest.verdict is ValidationVerdict.PASS
