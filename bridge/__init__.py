"""The legacy bridge: carries the legacy EventEmitter service's messages and exports into the
store's log, through the same single writer as every other write.

* ``translate`` (pure): one legacy message -> store commands, or a ``Rejection`` with its reason;
* ``LegacyBridge``: the consumer of ``legacy.assessment-events`` (dead letters to ``.dlq``);
* ``import_legacy``: a JSON Lines legacy export -> commands, resumable and idempotent;
* ``bridge_rejections`` / ``dead_letters``: everything the bridge or the store refused, with why;
* ``convert_legacy_state`` and the legacy message model (``LegacyEvent``, ``LEGACY_STATES``);
* ``NODE_DIR``: the Node side (``node/``): the tap that writes the legacy topic, and the sample legacy
  service the tests, demo and benchmarks run.

Dual mode and what steers the migration (flags, routing, the router, shadows, reverse sync, the legacy
service's HTTP client) are in ``assessment_store.migration``. See ``bridge/README.md``.
"""

from ._consumer import BridgeOptions, BridgeStats, LegacyBridge
from ._import import BadLine, ImportReport, import_legacy, rejected_path
from ._inspect import BridgeRejection, DeadLetter, bridge_rejections, dead_letters
from ._legacy import LEGACY_STATES, LegacyEvent, RejectKind, Rejection, convert_legacy_state
from ._node import NODE_DIR
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

__all__ = [
    "COMMAND_ID_PREFIX",
    "IMPORT_ID_PREFIX",
    "LEGACY_STATES",
    "NODE_DIR",
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
    "rejected_path",
    "translate",
    "translate_message",
]
