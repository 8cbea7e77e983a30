"""``migrate validate`` after the migration: the legacy service against the store (docs/migration.md).

Like datafold's data-diff: both sides checksum their rows per bucket of ids (the legacy service in
Node, the store in one PostgreSQL query), only the buckets whose (count, checksum) differ are fetched
from both sides and compared field by field. A million equal assessments cost two aggregate scans and
4096 numbers over the wire; each difference costs one bucket (~n/buckets rows) from each side.

Then the store's own consistency, for the assessments of the differing buckets plus a random sample of
buckets (all with ``deep``): each history against the state machine, and the projected row against
the fold of its events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from assessment_store.core import Assessment, Settings, ValidationError
from assessment_store.projections import (
    bucket_assessments,
    bucket_checksums,
    connection,
    fetch_histories,
    translate_db_errors,
)

from ._canonical import bucket_of
from ._compare import compare_rows
from ._history import check_history
from ._legacy_source import BUCKETS_PER_REQUEST, LegacyExport
from ._model import AFTER_KINDS, Finding, FindingKind, ValidationReport
from ._runs import record_validation

__all__ = ["DEFAULT_BUCKETS", "DEFAULT_MAX_FINDINGS", "DEFAULT_SAMPLE_BUCKETS", "validate_after"]

DEFAULT_BUCKETS = 4096
DEFAULT_MAX_FINDINGS = 20
DEFAULT_SAMPLE_BUCKETS = 4
"""Buckets whose histories are checked besides the differing ones (~1,000 assessments of a million)."""
_HISTORY_IDS_PER_QUERY = 5000


@dataclass
class _Findings:
    """Counts every finding, keeps the first ``cap`` of each kind (mutable while a run collects)."""

    cap: int
    totals: dict[FindingKind, int] = field(default_factory=lambda: {k: 0 for k in FindingKind})
    kept: list[Finding] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)

    def add(self, findings: Iterable[Finding]) -> None:
        for f in findings:
            self.totals[f.kind] += 1
            if f.assessment_id is not None:
                self.ids.add(f.assessment_id)
            if self.totals[f.kind] <= self.cap:
                self.kept.append(f)


async def validate_after(
    settings: Settings,
    legacy_url: str,
    *,
    buckets: int = DEFAULT_BUCKETS,
    max_findings: int = DEFAULT_MAX_FINDINGS,
    id_prefix: str = "",
    deep: bool = False,
    sample_buckets: int = DEFAULT_SAMPLE_BUCKETS,
    record: bool = True,
    seed: int | None = None,
    histories: bool = True,
) -> ValidationReport:
    """Compare the legacy service at ``legacy_url`` with the store; the report (recorded unless ``record``
    is false). ``id_prefix`` limits both sides to the ids starting with it; ``histories=False`` skips the
    store's history and fold checks (a store loaded without its events)."""
    if not 1 <= buckets <= 1 << 20:
        raise ValidationError("buckets", f"must be between 1 and {1 << 20}, got {buckets}")
    if max_findings < 0:
        raise ValidationError("max_findings", f"must be at least 0, got {max_findings}")
    started = datetime.now(UTC)
    seconds: dict[str, float] = {}
    found = _Findings(max_findings, {k: 0 for k in AFTER_KINDS})
    t = time.perf_counter()
    async with LegacyExport(legacy_url) as legacy, connection(settings) as conn:
        with translate_db_errors("computing the store's bucket checksums"):
            (legacy_total, legacy_sums), store_sums = await asyncio.gather(
                legacy.checksums(buckets, id_prefix), bucket_checksums(conn, buckets=buckets, id_prefix=id_prefix))
        seconds["checksums"] = time.perf_counter() - t
        store_total = sum(n for n, _ in store_sums.values())
        if legacy_total != store_total:
            found.add([Finding(FindingKind.COUNT_MISMATCH, None, "count",
                               (("legacy", legacy_total), ("store", store_total)),
                               f"legacy holds {legacy_total}, the store {store_total}")])
        differing = sorted(b for b in legacy_sums.keys() | store_sums.keys() if legacy_sums.get(b) != store_sums.get(b))

        t = time.perf_counter()
        rows_fetched = 0
        fetched: dict[int, list[Assessment]] = {}
        for i in range(0, len(differing), BUCKETS_PER_REQUEST):
            chunk = differing[i:i + BUCKETS_PER_REQUEST]
            legacy_rows, store_rows = await asyncio.gather(
                _collect(legacy.records(buckets, chunk, id_prefix)),
                _store_rows(conn, buckets, chunk, id_prefix))
            rows_fetched += len(legacy_rows) + len(store_rows)
            found.add(compare_rows(legacy_rows, store_rows))
            for a in store_rows:
                fetched.setdefault(bucket_of(a.assessment_id, buckets), []).append(a)
        seconds["descend"] = time.perf_counter() - t
        false_alarms = len(set(differing) - {bucket_of(aid, buckets) for aid in found.ids})

        # The store's own consistency: histories and folds of the differing buckets, a sample, or all.
        t = time.perf_counter()
        if not histories:
            to_check = []
        elif deep:
            to_check = sorted(store_sums)
        else:
            rest = sorted(store_sums.keys() - set(differing))
            rng = random.Random(seed)
            to_check = sorted(set(differing) & store_sums.keys()) + rng.sample(rest, min(sample_buckets, len(rest)))
        checked = 0
        for i in range(0, len(to_check), BUCKETS_PER_REQUEST):
            chunk = to_check[i:i + BUCKETS_PER_REQUEST]
            missing = [b for b in chunk if b not in fetched]
            rows = [a for b in chunk if b in fetched for a in fetched[b]]
            if missing:
                rows += await _store_rows(conn, buckets, missing, id_prefix)
            checked += await _check_histories(conn, rows, found)
        seconds["histories"] = time.perf_counter() - t

        report = ValidationReport(
            kind="after", legacy_source=legacy_url, id_prefix=id_prefix, buckets=buckets, started_at=started,
            finished_at=datetime.now(UTC), legacy_count=legacy_total, store_count=store_total,
            totals=dict(found.totals), findings=tuple(found.kept), max_findings=max_findings,
            buckets_differing=len(differing), rows_fetched=rows_fetched, histories_checked=checked,
            false_alarm_buckets=false_alarms, seconds=seconds,
        )
        if record:
            run_id = await record_validation(conn, report)
            report = dataclasses.replace(report, run_id=run_id)
    return report


async def _collect(items: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x async for x in items]


async def _store_rows(conn: asyncpg.Connection, buckets: int, chunk: Sequence[int], id_prefix: str) -> list[Assessment]:
    with translate_db_errors("reading the store's rows of differing buckets"):
        return await bucket_assessments(conn, buckets=buckets, bucket_ids=chunk, id_prefix=id_prefix)


async def _check_histories(conn: asyncpg.Connection, rows: Sequence[Assessment], found: _Findings) -> int:
    for i in range(0, len(rows), _HISTORY_IDS_PER_QUERY):
        part = rows[i:i + _HISTORY_IDS_PER_QUERY]
        with translate_db_errors("reading the store's event histories"):
            histories = await fetch_histories(conn, [a.assessment_id for a in part])
        for a in part:
            found.add(check_history(a.assessment_id, histories.get(a.assessment_id, []), a))
    return len(rows)
