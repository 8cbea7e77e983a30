"""Bucketed checksums of the projection, for ``assessment-store migrate validate`` (docs/migration.md).

The canonical text of a row is computed here, in PostgreSQL, with ``jsonb_build_array(...)::text``: the
same text the legacy service (``bridge/node/src/canonical.js``) and ``assessment_store.migration``
compute for a legacy record, pinned by ``migration/canonical_vectors.json``. One scan, GROUP BY bucket:
a million rows never leave the server, only one (count, sum) per bucket does. Every query is
parameterised; table names are fixed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from assessment_store.core import Assessment

from ._queries import ASSESSMENT_COLUMNS, assessment_from_row

__all__ = ["CANONICAL_SQL", "bucket_assessments", "bucket_checksums", "canonical_texts", "fetch_histories"]

CANONICAL_SQL = (
    "jsonb_build_array(a.assessment_id, lower(a.state), a.progress, a.message, a.request_data, a.result_data,"
    " a.error_message, floor(extract(epoch FROM a.created_at))::bigint,"
    " floor(extract(epoch FROM a.updated_at))::bigint,"
    " CASE WHEN a.state IN ('COMPLETED', 'FAILED') THEN a.duration_ms END)::text"
)
"""The canonical text of the row ``a`` (legacy representation; see migration/_canonical.py)."""

_BUCKET_SQL = "(('x' || substr(md5(a.assessment_id), 1, 8))::bit(32)::bigint % $1::bigint)"
# bit(64)::bigint is signed; the sum is taken mod 2^64 by the caller, where signed and unsigned agree.
_ROW_HASH_SQL = f"('x' || substr(md5({CANONICAL_SQL}), 1, 16))::bit(64)::bigint"
_SCOPE_SQL = "starts_with(a.assessment_id, $2::text)"

_CHECKSUMS = (
    f"SELECT {_BUCKET_SQL} AS bucket, count(*) AS n, sum({_ROW_HASH_SQL}) AS s"
    f" FROM projection.assessments a WHERE {_SCOPE_SQL} GROUP BY 1"
)
_ROWS = (
    f"SELECT {', '.join('a.' + c for c in ASSESSMENT_COLUMNS)} FROM projection.assessments a"
    f" WHERE {_SCOPE_SQL} AND {_BUCKET_SQL} = ANY($3::bigint[])"
)
_TWO_64 = 1 << 64


async def bucket_checksums(
    conn: asyncpg.Connection | asyncpg.Pool, *, buckets: int, id_prefix: str = ""
) -> dict[int, tuple[int, int]]:
    """bucket -> (rows, checksum: the sum of the rows' canonical hashes mod 2**64), for the non-empty
    buckets among ``buckets``, over the assessments whose id starts with ``id_prefix``."""
    rows = await conn.fetch(_CHECKSUMS, buckets, id_prefix)
    return {int(r["bucket"]): (int(r["n"]), int(r["s"]) % _TWO_64) for r in rows}


async def bucket_assessments(
    conn: asyncpg.Connection | asyncpg.Pool, *, buckets: int, bucket_ids: Sequence[int], id_prefix: str = ""
) -> list[Assessment]:
    """The assessments of the given buckets (one scan for all of them)."""
    rows = await conn.fetch(_ROWS, buckets, id_prefix, list(bucket_ids))
    return [assessment_from_row(r) for r in rows]


async def canonical_texts(conn: asyncpg.Connection | asyncpg.Pool, assessments: Sequence[Assessment]) -> list[str]:
    """The canonical text PostgreSQL computes for each of ``assessments`` (not read from the table: the
    values are sent), in order. What pins PostgreSQL to the shared test vectors."""
    if not assessments:
        return []
    rows = await conn.fetch(
        f"SELECT {CANONICAL_SQL} AS c FROM unnest($1::text[], $2::text[], $3::smallint[], $4::text[], $5::text[],"
        " $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[], $10::bigint[]) WITH ORDINALITY"
        " AS u(assessment_id, state, progress, message, request, result, error_message, created_at, updated_at,"
        " duration_ms, i), LATERAL (SELECT u.assessment_id, u.state, u.progress, u.message,"
        " u.request::jsonb AS request_data, u.result::jsonb AS result_data, u.error_message, u.created_at,"
        " u.updated_at, u.duration_ms) AS a ORDER BY u.i",
        [x.assessment_id for x in assessments], [x.state.value for x in assessments],
        [x.progress for x in assessments], [x.message for x in assessments],
        [_json_text(x.request_data) for x in assessments], [_json_text(x.result_data) for x in assessments],
        [x.error_message for x in assessments], [x.created_at for x in assessments],
        [x.updated_at for x in assessments], [x.duration for x in assessments],
    )
    return [str(r["c"]) for r in rows]


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def fetch_histories(
    conn: asyncpg.Connection | asyncpg.Pool, ids: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """Each id's events (``projection.assessment_events``) in version order: version, event_id, type,
    occurred_at, recorded_at, source, correlation_id, causation_id, payload."""
    rows = await conn.fetch(
        "SELECT assessment_id, version, event_id, type, occurred_at, recorded_at, source, correlation_id,"
        " causation_id, payload FROM projection.assessment_events WHERE assessment_id = ANY($1::text[])"
        " ORDER BY assessment_id, version",
        list(ids),
    )
    histories: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        histories.setdefault(r["assessment_id"], []).append(dict(r))
    return histories
