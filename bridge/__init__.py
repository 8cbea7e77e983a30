"""The legacy bridge: carries the legacy EventEmitter service's messages and exports into the
store's log, through the same single writer as every other write.

* ``translate`` (pure): one legacy message -> store commands, or a ``Rejection`` with its reason;
* ``LegacyBridge``: the consumer of ``legacy.assessment-events`` (dead letters to ``.dlq``);
* ``import_legacy``: a JSON Lines legacy export -> commands, resumable and idempotent;
* ``bridge_rejections`` / ``dead_letters``: everything the bridge or the store refused, with why;
* ``route_to_store`` / ``bucket``: sticky percentage routing, identical to the Node tap's;
* ``FlagStore`` / ``MigrationFlags``: the migration flags, as events on a compacted topic;
* ``MigrationRouter``: the dual-mode service, sticky per assessment, with counted legacy fallback
  (its test double of the legacy side, ``InMemoryLegacyBackend``, is in ``assessment_store.bridge.testing``);
* ``HttpLegacyBackend``: the router's legacy side over the Node sample service's HTTP face;
  ``start_legacy_http`` runs that service as a child process (demo, benchmark, tests);
* ``ReverseSync``: every change written through the store, re-emitted in the legacy format;
* ``ShadowObserver`` / ``MismatchLog``: shadow comparison of routed calls, mismatches kept in PostgreSQL;

See ``bridge/README.md``; ``bridge/node/`` is the Node tap that writes the legacy topic.
"""

from ._consumer import BridgeOptions, BridgeStats, LegacyBridge
from ._flags import FLAGS_TOPIC, FlagChange, FlagStore, FlagStoreStats, MigrationFlags, audit_trail
from ._import import BadLine, ImportReport, import_legacy
from ._inspect import BridgeRejection, DeadLetter, bridge_rejections, dead_letters
from ._legacy import LEGACY_STATES, LegacyEvent, RejectKind, Rejection, convert_legacy_state
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
from ._router import (
    FlagSource,
    LegacyBackend,
    LegacyNotSynced,
    MigrationRouter,
    RouterStats,
    Side,
    StoreBackend,
)
from ._routing import BUCKETS, bucket, route_to_store
from ._shadow import COMPARED_FIELDS, MismatchLog, ShadowMismatch, ShadowObserver, ShadowStats, Verdict, compare
from ._snapshot import IMPORT_ID_PREFIX, ExportRecord, ImportPlan, parse_export_line, plan_import
from ._translate import (
    COMMAND_ID_PREFIX,
    LegacyMessage,
    LegacyView,
    TranslateLimits,
    Translation,
    parse_message,
    plan_commands,
    translate,
    translate_message,
)
from ._flags import default_actor, flags_topic_spec

__all__ = [
    "default_actor",
    "flags_topic_spec",
    "HttpLegacyBackend",
    "LegacyHttpProcess",
    "start_legacy_http",
    "LegacyUnavailable",
    "assessment_from_legacy_record",
    "ReverseStats",
    "ReverseSync",
    "ReverseSyncStatus",
    "reverse_sync_status",
    "reverse_topic_spec",
    "to_legacy_message",
    "FlagSource",
    "LegacyBackend",
    "LegacyNotSynced",
    "MigrationRouter",
    "RouterStats",
    "Side",
    "StoreBackend",
    "FLAGS_TOPIC",
    "FlagChange",
    "FlagStore",
    "FlagStoreStats",
    "MigrationFlags",
    "audit_trail",
    "COMPARED_FIELDS",
    "MismatchLog",
    "ShadowMismatch",
    "ShadowObserver",
    "ShadowStats",
    "Verdict",
    "compare",
    "BUCKETS",
    "bucket",
    "route_to_store",
    "COMMAND_ID_PREFIX",
    "IMPORT_ID_PREFIX",
    "LEGACY_STATES",
    "BadLine",
    "BridgeOptions",
    "BridgeRejection",
    "BridgeStats",
    "DeadLetter",
    "ExportRecord",
    "ImportPlan",
    "ImportReport",
    "LegacyBridge",
    "LegacyEvent",
    "LegacyMessage",
    "LegacyView",
    "RejectKind",
    "Rejection",
    "TranslateLimits",
    "Translation",
    "bridge_rejections",
    "convert_legacy_state",
    "dead_letters",
    "import_legacy",
    "parse_export_line",
    "parse_message",
    "plan_commands",
    "plan_import",
    "translate",
    "translate_message",
]
