"""The rows ``public.fold_batch`` takes, as named tuples: one type per group of parallel arrays.

fold_batch (``sql/003_fold_batch.sql``) takes each group as one array per column, in the order of
these fields; ``columns`` turns a list of rows into those arrays. The field names are the SQL
parameters' without their prefix (``a_``, ``e_``, ``o_``, ``x_``, ``f_``), so a column added on one
side is found on the other by name, and a row built with too few values fails where it is built.

``public.fold_staged`` (``sql/011_fold_staged.sql``) reads the state, history and outcome rows
from temporary tables instead, filled by binary COPY: ``STAGING_TABLES`` names them and their
columns, which are these fields, in this order, with the types of fold_batch's parameters.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple, TypeVar

__all__ = ["HISTORY_COLUMNS", "OUTCOME_COLUMNS", "STAGING_TABLES", "AnomalyRow", "AssessmentRow", "HistoryRow", "OffsetRow", "OutcomeRow",
           "columns", "staging_ddl"]


class AssessmentRow(NamedTuple):
    """A folded state (``a_*``), with the version it was folded from (0 for a new assessment)."""

    prev: int
    id: str
    state: str
    version: int
    progress: int
    message: str | None
    request: str | None
    """JSON text (cast to jsonb in SQL)."""
    result: str | None
    """JSON text (cast to jsonb in SQL)."""
    error: str | None
    retryable: bool | None
    retry_count: int
    max_retries: int | None
    cancel: str | None
    duration: int | None
    timeout: int | None
    created: datetime
    updated: datetime
    started: datetime | None
    finished: datetime | None
    last_event: str


class HistoryRow(NamedTuple):
    """One applied event (``e_*``) and where it sits in the log."""

    id: str
    version: int
    event_id: str
    type: str
    occurred: datetime
    recorded: datetime
    source: str
    corr: str | None
    caus: str | None
    payload: str
    topic: str
    partition: int
    offset: int


HISTORY_COLUMNS = ("assessment_id", "version", "event_id", "type", "occurred_at", "recorded_at", "source",
                   "correlation_id", "causation_id", "payload", "kafka_topic", "kafka_partition", "kafka_offset")
"""The columns of ``assessment_events`` a ``HistoryRow``'s fields are, in its field order (for a COPY
straight into that table)."""


class OutcomeRow(NamedTuple):
    """A command's outcome (``o_*``): a rejection or duplicate from the outcomes topic, or an accepted
    command read off its event."""

    cmd: str
    id: str
    accepted: bool
    version: int | None
    event_id: str | None
    error_type: str | None
    error_message: str | None
    details: str | None
    processed: datetime
    partition: int
    offset: int
    cmd_offset: int


OUTCOME_COLUMNS = ("command_id", "assessment_id", "accepted", "version", "event_id", "error_type", "error_message",
                   "error_details", "processed_at", "kafka_partition", "kafka_offset", "command_offset")
"""The columns of ``command_outcomes`` an ``OutcomeRow``'s fields are, in its field order (for a COPY
straight into that table; ``details`` goes into the jsonb column as JSON text)."""


class AnomalyRow(NamedTuple):
    """A record the projector did not apply (``x_*``): duplicate, version gap, unfoldable, undecodable, fenced."""

    kind: str
    id: str
    version: int | None
    expected: int | None
    event_id: str | None
    topic: str
    partition: int
    offset: int
    detail: str
    raw: bytes | None


class OffsetRow(NamedTuple):
    """The next offset to read of one partition (``f_*``), committed with the rows."""

    topic: str
    partition: int
    next: int


Row = TypeVar("Row", AssessmentRow, HistoryRow, OutcomeRow, AnomalyRow, OffsetRow)

_TYPES: dict[type[Any], tuple[str, ...]] = {
    # fold_batch's parameter types, without the array brackets (request/result/payload/details are
    # JSON text, cast to jsonb when stored).
    AssessmentRow: ("bigint", "text", "text", "bigint", "smallint", "text", "text", "text", "text", "boolean",
                    "integer", "integer", "text", "bigint", "bigint", "timestamptz", "timestamptz", "timestamptz",
                    "timestamptz", "uuid"),
    HistoryRow: ("text", "bigint", "uuid", "text", "timestamptz", "timestamptz", "text", "text", "text", "text",
                 "text", "integer", "bigint"),
    OutcomeRow: ("text", "text", "boolean", "bigint", "uuid", "text", "text", "text", "timestamptz", "integer",
                 "bigint", "bigint"),
}

STAGING_TABLES: dict[type[Any], str] = {
    AssessmentRow: "fold_assessments", HistoryRow: "fold_events", OutcomeRow: "fold_outcomes",
}
"""The session's temporary table each row type is COPYed into for ``public.fold_staged``."""


def staging_ddl() -> str:
    """The statements creating a session's staging tables (if absent): emptied at every commit,
    so a batch never sees another's rows, and a rolled-back batch leaves none either."""
    statements = []
    for row_type, table in STAGING_TABLES.items():
        types = _TYPES[row_type]
        assert len(types) == len(row_type._fields), row_type
        cols = ", ".join(f'"{name}" {typ}' for name, typ in zip(row_type._fields, types, strict=True))
        statements.append(f"CREATE TEMPORARY TABLE IF NOT EXISTS pg_temp.{table} ({cols}) ON COMMIT DELETE ROWS;")
    return "\n".join(statements)


def columns(rows: list[Row], row_type: type[Row]) -> list[list[Any]]:
    """Rows -> one list per field, in field order (the parallel arrays fold_batch takes)."""
    if not rows:
        return [[] for _ in row_type._fields]
    return [list(col) for col in zip(*rows, strict=True)]
