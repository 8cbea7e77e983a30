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
  legacy stays a place to roll back to.
"""

from ._buckets import BUCKETS, bucket, route_to_store
from ._flags import FLAGS_TOPIC, FlagChange, FlagStore, FlagStoreStats, MigrationFlags, audit_trail, default_actor, flags_topic_spec
from ._legacy_http import HttpLegacyBackend, LegacyUnavailable, assessment_from_legacy_record
from ._legacy_process import LegacyHttpProcess, start_legacy_http
from ._reverse import (
    ReverseStats,
    ReverseSync,
    ReverseSyncStatus,
    reverse_sync_status,
    reverse_topic_spec,
    to_legacy_message,
)
from ._router import FlagSource, LegacyBackend, LegacyNotSynced, MigrationRouter, RouterStats, Side, StoreBackend
from ._shadow import COMPARED_FIELDS, MismatchLog, ShadowMismatch, ShadowObserver, ShadowStats, Verdict, compare

__all__ = [
    "BUCKETS",
    "COMPARED_FIELDS",
    "FLAGS_TOPIC",
    "FlagChange",
    "FlagSource",
    "FlagStore",
    "FlagStoreStats",
    "HttpLegacyBackend",
    "LegacyBackend",
    "LegacyHttpProcess",
    "LegacyNotSynced",
    "LegacyUnavailable",
    "MigrationFlags",
    "MigrationRouter",
    "MismatchLog",
    "ReverseStats",
    "ReverseSync",
    "ReverseSyncStatus",
    "RouterStats",
    "ShadowMismatch",
    "ShadowObserver",
    "ShadowStats",
    "Side",
    "StoreBackend",
    "Verdict",
    "assessment_from_legacy_record",
    "audit_trail",
    "bucket",
    "compare",
    "default_actor",
    "flags_topic_spec",
    "reverse_sync_status",
    "reverse_topic_spec",
    "route_to_store",
    "start_legacy_http",
    "to_legacy_message",
]
