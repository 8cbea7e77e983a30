"""Dual mode and what steers a migration off the legacy service.

* ``FlagStore`` / ``MigrationFlags``: the migration flags, as events on a compacted topic, audited;
* ``route_to_store`` / ``bucket``: sticky percentage routing, identical to the Node tap's;
* ``MigrationRouter``: the dual-mode service, sticky per assessment, with counted legacy fallback;
  its legacy side is a ``LegacyBackend`` (``HttpLegacyBackend`` in production; the in-memory double,
  ``InMemoryLegacyBackend``, is in ``assessment_store.migration.testing``);
* ``HttpLegacyBackend``: the router's legacy side over the legacy service's HTTP face;
  ``start_legacy_http`` runs the sample Node service as a child process (demo, benchmark, tests);
* ``ShadowObserver`` / ``MismatchLog``: shadow comparison of routed calls, mismatches kept in PostgreSQL;
* ``ReverseSync``: every change written through the store, re-emitted in the legacy format, so that
  legacy stays a place to roll back to;
* ``validate_after``: ``assessment-store migrate validate``, the legacy service against the store by
  bucketed checksums (descending only into differing buckets), plus the store's histories against the
  state machine and its projection against the fold of its events; ``latest_validation`` /
  ``require_recent_pass``: the runs recorded in PostgreSQL, for later steps (docs/migration.md);
* ``export_legacy``: ``migrate export``, the legacy service's records and audit log into a directory with a
  manifest; ``validate_before``: ``migrate validate --before``, an export against its manifest and legacy;
  ``import_audit``: the export's audit log into ``public.migration_audit``; ``import_export``: ``migrate
  import``, the whole export into the store, then the after-validation.
* ``RolloutController``: ``assessment-store migrate rollout``, the gated gradual rollout whose
  decisions are events on ``assessments.migration-rollout``, gated by what every router instance
  publishes per window (``ObservationPublisher``, ``evaluate_window``, ``GateTracker``);
  ``read_phase``: the migration's phase for ``migrate status``; ``run_baseline``: ``migrate baseline``,
  the projection's statistics and a performance baseline kept in PostgreSQL.
"""

from ._audit_import import AuditImportReport, import_audit
from ._before import validate_before
from ._complete import MigrationImport, import_export
from ._export import ASSESSMENTS_FILE, AUDIT_FILE, MANIFEST_FILE, ExportedFile, ExportManifest, export_legacy, read_manifest
from ._transitions import legacy_transitions
from ._buckets import BUCKETS, bucket, route_to_store
from ._cleanup import CleanupPlan, CleanupRefused, CleanupReport, cleanup_legacy, plan_cleanup
from ._canonical import bucket_of, canonical_legacy, canonical_store, id_hash, jsonb_text, row_hash
from ._compare import VALIDATED_FIELDS, compare_rows, same_json
from ._flags import FLAGS_TOPIC, FlagChange, FlagStore, FlagStoreStats, MigrationFlags, audit_trail, default_actor, flags_topic_spec
from ._history import check_history
from ._legacy_http import HttpLegacyBackend, LegacyUnavailable, assessment_from_legacy_record
from ._legacy_process import LegacyHttpProcess, start_legacy_http
from ._model import AFTER_KINDS, BEFORE_KINDS, Finding, FindingKind, ValidationReport, ValidationRun, ValidationVerdict
from ._render import EXIT_FINDINGS, EXIT_PASS, exit_code, recommendations, render, report_json
from ._reverse import (
    ReverseStats,
    ReverseSync,
    ReverseSyncStatus,
    reverse_sync_status,
    reverse_topic_spec,
    to_legacy_message,
)
from ._gates import Decision, FleetWindow, GateReading, GateThresholds, GateTracker, HealthReading, Level, WindowEvaluation, evaluate_window, fleet_window
from ._observations import LATENCY_BUCKETS_MS, OBSERVATIONS_TOPIC, ObservationPublisher, WindowObservation, observations_topic_spec, p95_ms, window_start
from ._rollout import (
    DEFAULT_STEPS,
    ROLLOUT_TOPIC,
    HealthProbe,
    NoRollout,
    RolloutController,
    RolloutEnded,
    RolloutEvent,
    RolloutLocked,
    RolloutPlan,
    RolloutState,
    fold,
    manual_rollback,
    read_rollout,
    reverse_sync_probe,
    rollout_topic_spec,
    send_command,
)
from ._rollout_render import event_line, parse_duration, render_phase, render_status
from ._phase import PHASES, MigrationPhase, derive_phase, read_phase
from ._baseline import (
    BaselineReport, PerformanceBaseline, Regression, Suggestion, Tolerance, compare_baselines, run_baseline,
)
from ._router import CallObserver, FlagSource, LegacyBackend, LegacyNotSynced, MigrationRouter, RouterStats, Side, StoreBackend, StoreNotSynced
from ._runs import NoRecentPass, latest_validation, record_validation, require_recent_pass
from ._shadow import COMPARED_FIELDS, MismatchLog, ShadowMismatch, ShadowObserver, ShadowStats, Verdict, compare
from ._validate import DEFAULT_BUCKETS, DEFAULT_MAX_FINDINGS, DEFAULT_SAMPLE_BUCKETS, validate_after

__all__ = [
    "BaselineReport",
    "PerformanceBaseline",
    "Regression",
    "Suggestion",
    "Tolerance",
    "compare_baselines",
    "run_baseline",
    "PHASES",
    "MigrationPhase",
    "derive_phase",
    "read_phase",
    "render_phase",
    "CleanupPlan",
    "CleanupRefused",
    "CleanupReport",
    "cleanup_legacy",
    "plan_cleanup",
    "AFTER_KINDS",
    "ASSESSMENTS_FILE",
    "AUDIT_FILE",
    "AuditImportReport",
    "BEFORE_KINDS",
    "ExportedFile",
    "ExportManifest",
    "MANIFEST_FILE",
    "MigrationImport",
    "export_legacy",
    "import_audit",
    "import_export",
    "legacy_transitions",
    "read_manifest",
    "validate_before",
    "CallObserver",
    "DEFAULT_STEPS",
    "Decision",
    "FleetWindow",
    "GateReading",
    "GateThresholds",
    "GateTracker",
    "HealthProbe",
    "HealthReading",
    "LATENCY_BUCKETS_MS",
    "Level",
    "NoRollout",
    "OBSERVATIONS_TOPIC",
    "ObservationPublisher",
    "ROLLOUT_TOPIC",
    "RolloutController",
    "RolloutEnded",
    "RolloutEvent",
    "RolloutLocked",
    "RolloutPlan",
    "RolloutState",
    "WindowEvaluation",
    "WindowObservation",
    "evaluate_window",
    "event_line",
    "fleet_window",
    "fold",
    "manual_rollback",
    "observations_topic_spec",
    "p95_ms",
    "parse_duration",
    "read_rollout",
    "render_status",
    "reverse_sync_probe",
    "rollout_topic_spec",
    "send_command",
    "window_start",
    "ValidationVerdict",
    "VALIDATED_FIELDS",
    "BUCKETS",
    "COMPARED_FIELDS",
    "DEFAULT_BUCKETS",
    "DEFAULT_MAX_FINDINGS",
    "DEFAULT_SAMPLE_BUCKETS",
    "EXIT_FINDINGS",
    "EXIT_PASS",
    "FLAGS_TOPIC",
    "assessment_from_legacy_record",
    "audit_trail",
    "bucket",
    "bucket_of",
    "canonical_legacy",
    "canonical_store",
    "check_history",
    "compare",
    "compare_rows",
    "default_actor",
    "exit_code",
    "Finding",
    "FindingKind",
    "FlagChange",
    "flags_topic_spec",
    "FlagSource",
    "FlagStore",
    "FlagStoreStats",
    "HttpLegacyBackend",
    "id_hash",
    "jsonb_text",
    "latest_validation",
    "LegacyBackend",
    "LegacyHttpProcess",
    "LegacyNotSynced",
    "StoreNotSynced",
    "LegacyUnavailable",
    "MigrationFlags",
    "MigrationRouter",
    "MismatchLog",
    "NoRecentPass",
    "recommendations",
    "record_validation",
    "render",
    "report_json",
    "require_recent_pass",
    "reverse_sync_status",
    "reverse_topic_spec",
    "ReverseStats",
    "ReverseSync",
    "ReverseSyncStatus",
    "route_to_store",
    "RouterStats",
    "row_hash",
    "same_json",
    "ShadowMismatch",
    "ShadowObserver",
    "ShadowStats",
    "Side",
    "start_legacy_http",
    "StoreBackend",
    "to_legacy_message",
    "validate_after",
    "ValidationReport",
    "ValidationRun",
    "Verdict",
]
