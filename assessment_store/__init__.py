"""AssessmentStore: an event-sourced assessment store on Apache Kafka and PostgreSQL.

Public names are re-exported here from private modules; ``tests/test_public_api.py`` pins them.

This package is the façade, the top of the house: the names a user needs (the client, the settings,
the model, the error tree) and the ``testing`` helpers, over the role packages, which all stand on the
kernel, ``assessment_store.core``. Imports run downward only (``docs/architecture.md`` draws the
layers; ``tests/test_house.py`` holds them).
"""

from assessment_store.core import (
    VERSION as __version__,
    Assessment,
    AssessmentNotFound,
    AssessmentStoreError,
    BackendError,
    CodecError,
    CommandTimeout,
    DatabaseUnavailable,
    DataRejected,
    DownloadFailed,
    Event,
    EventSource,
    EventType,
    InvalidTransition,
    KafkaUnavailable,
    MissingTool,
    NotQuarantined,
    Outcome,
    PortInUse,
    ServiceFailed,
    Settings,
    StackError,
    State,
    StoreUsageError,
    UnresolvableSchema,
    ValidationError,
    VersionConflict,
    WaitTimeout,
)

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from assessment_store.client import (
        AssessmentStore,
        EventRecord,
        Position,
        PositionTable,
        Subscription,
        SyncAssessmentStore,
        SyncSubscription,
    )

# The client's names are imported on first use (PEP 562): every process of the store imports this
# package first (``assessment_store.core`` lives under it), and the services (processor, projector)
# need none of the client, which took a third of their start-up (bench.restart).
_CLIENT_NAMES = frozenset({"AssessmentStore", "EventRecord", "Position", "PositionTable", "Subscription",
                           "SyncAssessmentStore", "SyncSubscription"})


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from assessment_store import client

        value = getattr(client, name)
        globals()[name] = value  # the next look-up is a plain attribute
        return value
    raise AttributeError(f"module 'assessment_store' has no attribute {name!r}")

__all__ = [
    "Assessment",
    "AssessmentNotFound",
    "AssessmentStore",
    "AssessmentStoreError",
    "BackendError",
    "CodecError",
    "CommandTimeout",
    "DataRejected",
    "DatabaseUnavailable",
    "DownloadFailed",
    "Event",
    "EventRecord",
    "EventSource",
    "EventType",
    "InvalidTransition",
    "KafkaUnavailable",
    "MissingTool",
    "NotQuarantined",
    "Outcome",
    "PortInUse",
    "Position",
    "PositionTable",
    "ServiceFailed",
    "Settings",
    "StackError",
    "State",
    "StoreUsageError",
    "Subscription",
    "SyncAssessmentStore",
    "SyncSubscription",
    "UnresolvableSchema",
    "ValidationError",
    "VersionConflict",
    "WaitTimeout",
    "__version__",
]

