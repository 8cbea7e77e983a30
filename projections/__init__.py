"""Folding the log into PostgreSQL, and reading it back: the projector, queries, waiting."""

from ._audit import LEGACY_AUDIT_OPERATION_PREFIX, LegacyAuditRow, import_legacy_audit, record_audit
from ._checksums import bucket_assessments, bucket_checksums, canonical_texts, fetch_histories
from ._db import SCHEMA_VERSION, connect, create_pool, migrate, translate_db_errors
from ._notify import Change, ChangeListener
from ._projector import CHANGES_CHANNEL, OUTCOMES_CHANNEL, FoldStats, Projector, ProjectorStats
from ._health import ProjectionHealth, projection_health
from ._quarantine import QuarantineEntry, RefoldResult, list_quarantine, refold
from ._replay import REBUILD_SCHEMA, ReplayReport, Verification, replay, verify_schemas
from ._timetravel import counts_at, state_at
from ._queries import count_by_state, fetch_assessment, fetch_history, fetch_outcome, list_ids, list_page
from ._db import connection
from ._queries import fetch_assessments, fetch_outcome_acceptance, fetch_rejections, fetch_states
from ._queries import ProjectorOffset, projector_offsets
from ._pg_stats import (
    IndexUsage, StoredBaseline, TableStats, analyze_tables, event_count, index_usage, latest_baseline, outcome_counts,
    record_baseline, table_stats, vacuum_tables,
)

__all__ = [
    "IndexUsage",
    "StoredBaseline",
    "TableStats",
    "analyze_tables",
    "event_count",
    "index_usage",
    "latest_baseline",
    "outcome_counts",
    "record_baseline",
    "table_stats",
    "vacuum_tables",
    "ProjectionHealth",
    "projection_health",
    "ProjectorOffset",
    "projector_offsets",
    "bucket_assessments",
    "bucket_checksums",
    "canonical_texts",
    "fetch_histories",
    "fetch_assessments",
    "fetch_outcome_acceptance",
    "fetch_rejections",
    "fetch_states",
    "connection",
    "record_audit",
    "LEGACY_AUDIT_OPERATION_PREFIX",
    "LegacyAuditRow",
    "import_legacy_audit",
    "QuarantineEntry",
    "RefoldResult",
    "list_quarantine",
    "refold",
    "REBUILD_SCHEMA",
    "ReplayReport",
    "Verification",
    "counts_at",
    "replay",
    "state_at",
    "verify_schemas",
    "CHANGES_CHANNEL",
    "OUTCOMES_CHANNEL",
    "SCHEMA_VERSION",
    "Change",
    "ChangeListener",
    "FoldStats",
    "ProjectorStats",
    "Projector",
    "connect",
    "count_by_state",
    "create_pool",
    "fetch_assessment",
    "fetch_history",
    "fetch_outcome",
    "list_ids",
    "list_page",
    "migrate",
    "translate_db_errors",
]
