"""Reads of the projection. Every query is parameterised; table names are fixed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from assessment_store.core import Assessment, Outcome, State

from ._db import check_schema_name, translate_db_errors

__all__ = [
    "ASSESSMENT_COLUMNS",
    "assessment_from_json",
    "assessment_from_row",
    "assessment_to_row",
    "count_by_state",
    "fetch_assessment",
    "fetch_assessments",
    "fetch_history",
    "fetch_outcome",
    "fetch_outcome_acceptance",
    "fetch_rejections",
    "fetch_states",
    "list_ids",
    "list_page",
    "ProjectorOffset",
    "projector_offsets",
]

ASSESSMENT_COLUMNS = (
    "assessment_id", "state", "version", "progress", "message", "request_data", "result_data",
    "error_message", "retryable", "retry_count", "max_retries", "cancel_reason", "duration_ms",
    "processing_timeout_ms", "created_at", "updated_at", "started_at", "finished_at", "last_event_id",
)
_SELECT = f"SELECT {', '.join(ASSESSMENT_COLUMNS)} FROM projection.assessments"


def assessment_from_row(r: asyncpg.Record | Mapping[str, Any]) -> Assessment:
    return Assessment(
        assessment_id=r["assessment_id"],
        state=State(r["state"]),
        version=r["version"],
        progress=r["progress"],
        message=r["message"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        request_data=r["request_data"],
        result_data=r["result_data"],
        error_message=r["error_message"],
        retry_count=r["retry_count"],
        duration=r["duration_ms"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        retryable=r["retryable"],
        cancel_reason=r["cancel_reason"],
        processing_timeout_ms=r["processing_timeout_ms"],
        max_retries=r["max_retries"],
        last_event_id=str(r["last_event_id"]),
    )


def _instant(value: str | None) -> datetime | None:
    # PostgreSQL writes a timestamptz into JSON in ISO 8601 with the session's offset; asyncpg
    # reads one as a UTC datetime. Same instant, and the same tzinfo here too.
    return datetime.fromisoformat(value).astimezone(UTC) if value is not None else None


_TIMESTAMPS = ("created_at", "updated_at", "started_at", "finished_at")


def assessment_from_json(doc: Mapping[str, Any]) -> Assessment:
    """An assessment from ``row_to_json`` of its row (a reply notification): the values
    ``assessment_from_row`` gives for the same row. jsonb columns are embedded as JSON, in jsonb's
    own text, so ``json.loads`` of the document gives what the pool's codec gives; timestamps are
    ISO 8601 text, read here; the uuid is its text, as ``assessment_from_row`` makes it."""
    return assessment_from_row({**doc, **{k: _instant(doc[k]) for k in _TIMESTAMPS}})


def assessment_to_row(a: Assessment) -> tuple[Any, ...]:
    """Values in ``ASSESSMENT_COLUMNS`` order."""
    return (
        a.assessment_id, a.state.value, a.version, a.progress, a.message, a.request_data, a.result_data,
        a.error_message, a.retryable, a.retry_count, a.max_retries, a.cancel_reason, a.duration,
        a.processing_timeout_ms, a.created_at, a.updated_at, a.started_at, a.finished_at, a.last_event_id,
    )


async def fetch_assessment(conn: asyncpg.Connection | asyncpg.Pool, assessment_id: str) -> Assessment | None:
    row = await conn.fetchrow(_SELECT + " WHERE assessment_id = $1", assessment_id)
    return assessment_from_row(row) if row is not None else None


async def fetch_assessments(
    conn: asyncpg.Connection | asyncpg.Pool, ids: list[str], *, schema: str = "projection"
) -> dict[str, Assessment]:
    """The given assessments from ``schema`` (a validated identifier: the live projection or a
    rebuild's)."""
    sql = _SELECT.replace("projection.", f"{schema}.") + " WHERE assessment_id = ANY($1::text[])"
    return {r["assessment_id"]: assessment_from_row(r) for r in await conn.fetch(sql, ids)}


async def count_by_state(conn: asyncpg.Connection | asyncpg.Pool) -> dict[State, int]:
    rows = await conn.fetch("SELECT state, count(*) AS n FROM projection.assessments GROUP BY state")
    counts = {s: 0 for s in State}
    counts.update({State(r["state"]): r["n"] for r in rows})
    return counts


async def list_ids(conn: asyncpg.Connection | asyncpg.Pool, *, state: State | None = None) -> list[str]:
    if state is None:
        rows = await conn.fetch("SELECT assessment_id FROM projection.assessments ORDER BY assessment_id")
    else:
        rows = await conn.fetch(
            "SELECT assessment_id FROM projection.assessments WHERE state = $1 ORDER BY assessment_id", state.value
        )
    return [r["assessment_id"] for r in rows]


_OUTCOME_COLUMNS = ("command_id, assessment_id, accepted, version, event_id, error_type, error_message, error_details,"
                    " processed_at, command_offset")


def _outcome_from_row(r: asyncpg.Record) -> Outcome:
    return Outcome(
        command_id=r["command_id"], assessment_id=r["assessment_id"], accepted=r["accepted"],
        processed_at=r["processed_at"], command_offset=r["command_offset"], version=r["version"],
        event_id=str(r["event_id"]) if r["event_id"] is not None else None, error_type=r["error_type"],
        error_message=r["error_message"], error_details=r["error_details"],
    )


async def fetch_outcome(conn: asyncpg.Connection | asyncpg.Pool, command_id: str) -> Outcome | None:
    r = await conn.fetchrow(
        f"SELECT {_OUTCOME_COLUMNS} FROM projection.command_outcomes WHERE command_id = $1", command_id,
    )
    return None if r is None else _outcome_from_row(r)


async def fetch_outcome_acceptance(conn: asyncpg.Connection | asyncpg.Pool, command_ids: list[str]) -> dict[str, bool]:
    """Whether each command that has an outcome yet was accepted; commands without one are absent."""
    rows = await conn.fetch(
        "SELECT command_id, accepted FROM projection.command_outcomes WHERE command_id = ANY($1::text[])", command_ids,
    )
    return {r["command_id"]: r["accepted"] for r in rows}


async def fetch_rejections(
    conn: asyncpg.Connection | asyncpg.Pool, *, command_id_prefixes: tuple[str, ...], assessment_id: str | None = None,
    limit: int = 1000,
) -> list[Outcome]:
    """Refused commands whose id starts with one of the prefixes (oldest first), optionally of one assessment."""
    rows = await conn.fetch(
        f"SELECT {_OUTCOME_COLUMNS} FROM projection.command_outcomes"
        " WHERE NOT accepted AND EXISTS (SELECT 1 FROM unnest($1::text[]) AS p(prefix) WHERE starts_with(command_id, p.prefix))"
        " AND ($2::text IS NULL OR assessment_id = $2)"
        " ORDER BY processed_at, command_id LIMIT $3",
        list(command_id_prefixes), assessment_id, limit,
    )
    return [_outcome_from_row(r) for r in rows]


async def fetch_states(conn: asyncpg.Connection | asyncpg.Pool, assessment_ids: list[str]) -> dict[str, State]:
    """The projected state of each assessment that exists; unknown ids are absent."""
    rows = await conn.fetch(
        "SELECT assessment_id, state FROM projection.assessments WHERE assessment_id = ANY($1::text[])", assessment_ids,
    )
    return {r["assessment_id"]: State(r["state"]) for r in rows}


async def list_page(
    conn: asyncpg.Connection | asyncpg.Pool, *, state: State | None, after: str | None, limit: int
) -> list[Assessment]:
    """Up to ``limit`` assessments ordered by id, strictly after ``after`` (keyset paging: stable
    under concurrent inserts, and an index range scan however deep the page)."""
    rows = await conn.fetch(
        _SELECT + " WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR assessment_id > $2)"
        " ORDER BY assessment_id LIMIT $3",
        state.value if state is not None else None, after, limit,
    )
    return [assessment_from_row(r) for r in rows]


async def fetch_history(conn: asyncpg.Connection | asyncpg.Pool, assessment_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT version, event_id, type, occurred_at, recorded_at, source, correlation_id, causation_id,"
        " payload, kafka_topic, kafka_partition, kafka_offset"
        " FROM projection.assessment_events WHERE assessment_id = $1 ORDER BY version",
        assessment_id,
    )
    return [dict(r) for r in rows]


@dataclass(frozen=True)
class ProjectorOffset:
    """One row of ``projector_offsets``: the next offset the projector folds in a partition, and
    when a batch last wrote it (the time of the projector's last commit there)."""

    topic: str
    partition: int
    next_offset: int
    updated_at: datetime


async def projector_offsets(
    conn: asyncpg.Connection | asyncpg.Pool, group: str, *, schema: str = "projection"
) -> list[ProjectorOffset]:
    """The projector's stored offsets of ``group`` in ``schema`` (a validated identifier), ordered
    by topic and partition. These, not the group's offsets in Kafka (an advisory mirror written up
    to a second later), are where the projector resumes: its lag is measured from here."""
    check_schema_name(schema)
    with translate_db_errors("reading the projector's stored offsets"):
        rows = await conn.fetch(
            f"SELECT topic, partition, next_offset, updated_at FROM {schema}.projector_offsets"
            " WHERE consumer_group = $1 ORDER BY topic, partition", group)
    return [ProjectorOffset(r["topic"], r["partition"], r["next_offset"], r["updated_at"]) for r in rows]
