"""The local stack: a real Kafka broker (jars from Maven) and a real PostgreSQL cluster
(Debian's binaries), plus the store's command processor and projector, started without Docker."""

from ._kafka import KafkaService
from ._manager import SERVICES, Stack
from ._postgres import PostgresService
from ._procs import ServiceStatus
from ._store_services import BridgeService, ProcessorService, ProjectorService, ReverseSyncService, settings_env
from ._procs import tail
from ._schema_registry import MiniSchemaRegistry, SchemaRegistryService

__all__ = [
    "tail",
    "MiniSchemaRegistry", "SchemaRegistryService",
    "SERVICES", "BridgeService", "KafkaService", "PostgresService", "ProcessorService", "ProjectorService", "ReverseSyncService", "ServiceStatus",
    "Stack",
    "settings_env",
]
