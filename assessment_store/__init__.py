"""AssessmentStore: an event-sourced assessment store on Apache Kafka and PostgreSQL.

Public names are re-exported here from private modules; ``tests/test_public_api.py`` pins them.
"""

# Order matters: the role packages (streams, projections, schemas) import the core modules
# (_config, _errors, _model, _domain) of this package, so those load before _store.
from ._config import Settings
from ._errors import (
    AssessmentNotFound,
    AssessmentStoreError,
    BackendError,
    CodecError,
    DatabaseUnavailable,
    DownloadFailed,
    InvalidTransition,
    KafkaUnavailable,
    MissingTool,
    PortInUse,
    ServiceFailed,
    StackError,
    StoreUsageError,
    ValidationError,
    VersionConflict,
    WaitTimeout,
)
from ._model import Assessment, Event, EventSource, EventType, State
from ._store import AssessmentStore

__version__ = "0.1.0"

__all__ = [
    "Assessment",
    "AssessmentNotFound",
    "AssessmentStore",
    "AssessmentStoreError",
    "BackendError",
    "CodecError",
    "DatabaseUnavailable",
    "DownloadFailed",
    "Event",
    "EventSource",
    "EventType",
    "InvalidTransition",
    "KafkaUnavailable",
    "MissingTool",
    "PortInUse",
    "ServiceFailed",
    "Settings",
    "StackError",
    "State",
    "StoreUsageError",
    "ValidationError",
    "VersionConflict",
    "WaitTimeout",
    "__version__",
]
