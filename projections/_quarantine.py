"""Assessments the projector quarantined because PostgreSQL refused a value of one of their events,
and re-folding one after a fix.

Why and how assessments get here is written down in ``projections._projector`` (module docstring).
A re-fold applies the held events in log order with the code and schema running now. It takes the
projection's swap lock (``fold_batch``'s advisory lock, exclusively), so no live batch is in flight
while it reads the held records and writes their rows; on success it drops the quarantine (and the
held rows) and bumps the projection's generation, so each live projector reconnects and reloads the
quarantine list before its next batch (a projector's list is otherwise only read with its offsets).
Refused again, the assessment stays quarantined, with the new error and the attempt counted.

What counts as a fix: anything that lets PostgreSQL store the values, such as a projector release
that folds them differently or a migration widening a column. Because the projection is a pure
function of the log, the same fix must reach a rebuild too (``assessment-store replay``), or the
rebuild quarantines the assessment again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from aiokafka.structs import ConsumerRecord

from assessment_store.core import DataRejected, NotQuarantined, Settings

from ._audit import record_audit
from ._db import LIVE_SCHEMA, check_schema_name, connect, migrate, translate_db_errors
from ._projector import _FOLD_BATCH, FoldStats, Projector, _Batch
from ._queries import fetch_assessments

__all__ = ["QuarantineEntry", "RefoldResult", "list_quarantine", "refold"]


@dataclass(frozen=True)
class QuarantineEntry:
    assessment_id: str
    reason: str
    sqlstate: str | None
    topic: str
    partition: int
    offset: int
    """of the first refused event"""
    quarantined_at: datetime
    held: int
    """events kept aside, the refused one included"""
    refold_attempts: int
    last_refold_error: str | None


@dataclass(frozen=True)
class RefoldResult:
    assessment_id: str
    refolded: bool
    """True: every held event applied, the quarantine lifted; False: refused again (``error``)"""
    events: int
    version: int | None
    """the assessment's version after the re-fold (None if it has no row)"""
    error: str | None = None


async def list_quarantine(settings: Settings, *, schema: str = LIVE_SCHEMA) -> list[QuarantineEntry]:
    """The quarantined assessments of ``schema``, oldest first."""
    check_schema_name(schema)
    conn = await connect(settings)
    try:
        with translate_db_errors("listing quarantined assessments"):
            await migrate(conn)
            rows = await conn.fetch(
                f"SELECT q.*, (SELECT count(*) FROM {schema}.quarantine_held h WHERE h.assessment_id = q.assessment_id)"
                f" AS held FROM {schema}.quarantine q ORDER BY q.quarantined_at, q.assessment_id"
            )
    finally:
        await conn.close()
    return [QuarantineEntry(r["assessment_id"], r["reason"], r["sqlstate"], r["kafka_topic"], r["kafka_partition"],
                            r["kafka_offset"], r["quarantined_at"], r["held"], r["refold_attempts"],
                            r["last_refold_error"]) for r in rows]


async def refold(settings: Settings, assessment_id: str) -> RefoldResult:
    """Re-apply the held events of a quarantined assessment of the live projection, in log order
    (see the module docstring). ``NotQuarantined`` if it is not quarantined."""
    projector = Projector(settings)  # its fold code and codecs only: no consumer, no pool
    conn = await connect(settings)
    try:
        with translate_db_errors(f"re-folding quarantined assessment {assessment_id!r}"):
            await migrate(conn)
            async with conn.transaction():
                # Exclusive: every live batch in flight finishes first, none starts until COMMIT.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('fold_batch:' || $1))", LIVE_SCHEMA)
                if not await conn.fetchval(
                        "SELECT 1 FROM projection.quarantine WHERE assessment_id = $1 FOR UPDATE", assessment_id):
                    raise NotQuarantined(assessment_id)
                rows = await conn.fetch(
                    "SELECT * FROM projection.quarantine_held WHERE assessment_id = $1"
                    " ORDER BY kafka_topic, kafka_partition, kafka_offset", assessment_id)
                batch = _Batch()
                for r in rows:
                    rec = ConsumerRecord(
                        r["kafka_topic"], r["kafka_partition"], r["kafka_offset"], r["timestamp_ms"], 0,
                        r["raw_key"], r["raw_value"], None, len(r["raw_key"] or b""), len(r["raw_value"] or b""),
                        list(zip(r["header_keys"], r["header_values"], strict=True)),
                    )
                    # Held records were decodable when held (undecodable ones are anomalies).
                    batch.events.append((rec, projector.codec.decode(rec.value, rec.headers)))
                projector._generation = int(await conn.fetchval("SELECT generation FROM projection.meta"))
                states = await fetch_assessments(conn, [assessment_id])
                # A copy: the fold advances the states it is given, and a refusal reports the stored one.
                prepared, changed = projector._prepare(batch, dict(states), FoldStats())
                try:
                    async with conn.transaction():  # a savepoint: refused, only the re-fold rolls back
                        with translate_db_errors(f"re-folding the held events of {assessment_id!r}"):
                            await conn.execute(_FOLD_BATCH, *projector._batch_args(prepared))
                except DataRejected as e:
                    await conn.execute(
                        "UPDATE projection.quarantine SET refold_attempts = refold_attempts + 1,"
                        " last_refold_at = now(), last_refold_error = $2 WHERE assessment_id = $1",
                        assessment_id, e.reason.replace("\x00", "\ufffd"))
                    return RefoldResult(assessment_id, False, len(rows), states[assessment_id].version
                                        if assessment_id in states else None, e.reason)
                await conn.execute("DELETE FROM projection.quarantine WHERE assessment_id = $1", assessment_id)
                # Live projectors cache the quarantine list: a new generation makes each reload it
                # (fold_batch refuses their next batch with AS001, and they reconnect and re-seek).
                await conn.execute("UPDATE projection.meta SET generation = generation + 1")
                await record_audit(conn, "quarantine_refold", "assessment-store quarantine refold",
                                   {"assessment_id": assessment_id, "events": len(rows)})
    finally:
        await conn.close()
    final = changed.get(assessment_id) or states.get(assessment_id)
    return RefoldResult(assessment_id, True, len(rows), final.version if final else None)
