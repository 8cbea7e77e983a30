"""AssessmentStore: an event-sourced assessment store on Apache Kafka and PostgreSQL.

Public names are re-exported here from private modules; ``tests/test_public_api.py`` pins them.
"""

# The role packages (assessment_store.streams, .projections, .schemas) import this package's core
# modules (_config, _errors, _model, _domain), and _store imports the role packages. So _store is
# loaded lazily (module __getattr__ below): importing `assessment_store.projections` first must not
# run into a cycle.
from typing import TYPE_CHECKING, Any

from ._config import Settings
from ._errors import (
    AssessmentNotFound,
    AssessmentStoreError,
    BackendError,
    CodecError,
    CommandTimeout,
    DataRejected,
    NotQuarantined,
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
from ._model import Assessment, Event, EventSource, EventType, Outcome, State

if TYPE_CHECKING:
    from ._store import AssessmentStore
    from ._sync import SyncAssessmentStore

__version__ = "0.1.0"

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
    "EventSource",
    "EventType",
    "InvalidTransition",
    "KafkaUnavailable",
    "MissingTool",
    "NotQuarantined",
    "Outcome",
    "PortInUse",
    "ServiceFailed",
    "Settings",
    "StackError",
    "State",
    "StoreUsageError",
    "SyncAssessmentStore",
    "ValidationError",
    "VersionConflict",
    "WaitTimeout",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "AssessmentStore":
        from ._store import AssessmentStore

        return AssessmentStore
    if name == "SyncAssessmentStore":
        from ._sync import SyncAssessmentStore

        return SyncAssessmentStore
    raise AttributeError(f"module 'assessment_store' has no attribute {name!r}")
