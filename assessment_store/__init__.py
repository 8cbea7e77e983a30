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


from assessment_store.client import (
    AssessmentStore,
    EventRecord,
    Position,
    PositionTable,
    Subscription,
    SyncAssessmentStore,
    SyncSubscription,
)

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

