"""``Stack``: starts, stops and reports the local services in dependency order."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from typing import Protocol

from assessment_store.core import Settings
from assessment_store.streams import ensure_topics

from ._kafka import KafkaService
from ._postgres import PostgresService
from ._procs import LogFn, ServiceStatus
from ._prometheus import AlertmanagerService, PrometheusService
from ._schema_registry import SchemaRegistryService
from ._store_services import (
    BridgeService,
    DashboardService,
    LagMonitorService,
    ProcessorService,
    ProjectorService,
    ReverseSyncService,
)

__all__ = ["SERVICES", "Stack"]

# The schema registry before the store's processes: a writer configured for it registers its schemas
# when it starts.
SERVICES = ("kafka", "postgres", "schema-registry", "processor", "projector", "bridge", "reverse-sync", "lag-monitor",
            "dashboard", "alertmanager", "prometheus")
_OPT_IN: dict[str, str | None] = {"schema-registry": None, "reverse-sync": "reverse_sync", "lag-monitor": None,
                                  "dashboard": None,
                                  "alertmanager": None, "prometheus": None}
"""Services that ``up`` starts without being named only when their setting is on (``ASSESSMENT_STORE_REVERSE_SYNC``;
None: never); ``down`` and ``status`` include them whenever they run."""


class _Service(Protocol):
    name: str

    def start(self, log: LogFn = ..., timeout_s: float = ...) -> bool: ...
    def stop(self) -> bool: ...
    def status(self) -> ServiceStatus: ...


class Stack:
    """Kafka, PostgreSQL, the command processor, the projector and the legacy bridge of one data directory."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.kafka = KafkaService(self.settings)
        self.postgres = PostgresService(self.settings)
        self.processor = ProcessorService(self.settings)
        self.projector = ProjectorService(self.settings)
        self.bridge = BridgeService(self.settings)
        self.reverse_sync = ReverseSyncService(self.settings)
        self.lag_monitor = LagMonitorService(self.settings)
        self.dashboard = DashboardService(self.settings)
        self.alertmanager = AlertmanagerService(self.settings)
        self.prometheus = PrometheusService(self.settings)
        self.schema_registry = SchemaRegistryService(self.settings)
        self._by_name: dict[str, _Service] = {
            "kafka": self.kafka, "postgres": self.postgres, "processor": self.processor, "projector": self.projector,
            "bridge": self.bridge, "reverse-sync": self.reverse_sync, "lag-monitor": self.lag_monitor,
            "dashboard": self.dashboard, "alertmanager": self.alertmanager, "prometheus": self.prometheus,
            "schema-registry": self.schema_registry,
        }

    def default_services(self) -> list[str]:
        """What ``up``/``down``/``status`` act on when no service is named."""
        return [n for n in SERVICES if n not in _OPT_IN or self._opted_in(n)]

    def _opted_in(self, name: str) -> bool:
        setting = _OPT_IN[name]
        if setting is not None and getattr(self.settings, setting):
            return True
        pid = getattr(self._by_name[name], "pid", None)
        return pid is not None and pid() is not None

    def _select(self, names: Sequence[str] | None) -> list[_Service]:
        chosen = list(names) if names else self.default_services()
        unknown = [n for n in chosen if n not in self._by_name]
        if unknown:
            raise ValueError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(SERVICES)}")
        return [self._by_name[n] for n in SERVICES if n in chosen]

    def up(self, services: Sequence[str] | None = None, log: LogFn = print) -> dict[str, bool]:
        """Start what is not running; returns {service: started_now}. A second call is a no-op."""
        started: dict[str, bool] = {}
        for svc in self._select(services):
            if svc in (self.processor, self.projector, self.bridge, self.reverse_sync) and not any(
                n in started for n in ("processor", "projector", "bridge", "reverse-sync")
            ):
                # The store's processes subscribe to topics, which must exist first.
                created = asyncio.run(ensure_topics(self.settings))
                if created:
                    log(f"created topics: {', '.join(created)}")
            started[svc.name] = svc.start(log)
            log(f"{svc.name}: {'started' if started[svc.name] else 'already running'}")
        return started

    def down(self, services: Sequence[str] | None = None, log: LogFn = print) -> dict[str, bool]:
        """Stop what runs, dependents first; returns {service: stopped_now}."""
        stopped: dict[str, bool] = {}
        for svc in reversed(self._select(services)):
            stopped[svc.name] = svc.stop()
            log(f"{svc.name}: {'stopped' if stopped[svc.name] else 'not running'}")
        return stopped

    def purge(self, log: LogFn = print) -> None:
        """Stop everything and delete the data directory (and a relocated PostgreSQL cluster).
        Destructive: the CLI asks for ``--yes``."""
        self.down(log=log)
        pgdata = self.postgres.pgdata()
        data_dir = self.settings.data_dir.resolve()
        if not pgdata.is_relative_to(data_dir):
            shutil.rmtree(pgdata.parent, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
        log(f"deleted {data_dir}")

    def status(self) -> list[ServiceStatus]:
        return [svc.status() for svc in self._select(None)]

    def log_path(self, service: str) -> str:
        return self._select([service])[0].status().log
