"""Validation of the migration off legacy: ``assessment-store migrate validate`` (docs/migration.md).

* ``validate_after``: the legacy service against the store, by bucketed checksums (data-diff style),
  plus the store's histories against the state machine and its projection against the fold of its events;
* ``latest_validation`` / ``require_recent_pass``: the runs recorded in PostgreSQL, for later steps;
* the canonical form both sides hash (``canonical_legacy``, ``canonical_store``, ``bucket_of``, ...);
* ``render`` / ``report_json`` / ``exit_code``: the command's output.
"""

from ._canonical import bucket_of, canonical_legacy, canonical_store, id_hash, jsonb_text, row_hash
from ._compare import COMPARED_FIELDS, compare_rows, same_json
from ._history import check_history
from ._model import Finding, FindingKind, ValidationReport, ValidationRun, Verdict
from ._render import EXIT_FINDINGS, EXIT_PASS, exit_code, recommendations, render, report_json
from ._runs import NoRecentPass, latest_validation, record_validation, require_recent_pass
from ._validate import DEFAULT_BUCKETS, DEFAULT_MAX_FINDINGS, DEFAULT_SAMPLE_BUCKETS, validate_after

__all__ = [
    "COMPARED_FIELDS",
    "DEFAULT_BUCKETS",
    "DEFAULT_MAX_FINDINGS",
    "DEFAULT_SAMPLE_BUCKETS",
    "EXIT_FINDINGS",
    "EXIT_PASS",
    "Finding",
    "FindingKind",
    "NoRecentPass",
    "ValidationReport",
    "ValidationRun",
    "Verdict",
    "bucket_of",
    "canonical_legacy",
    "canonical_store",
    "check_history",
    "compare_rows",
    "exit_code",
    "id_hash",
    "jsonb_text",
    "latest_validation",
    "recommendations",
    "record_validation",
    "render",
    "report_json",
    "require_recent_pass",
    "row_hash",
    "same_json",
    "validate_after",
]
