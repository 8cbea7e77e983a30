"""The store's own long-running processes (command processor, projector), managed like the
other services: started in the background with the stack's settings, pid files, logs, readiness."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pydantic import SecretStr

from assessment_store.core import ServiceFailed, Settings
from assessment_store.streams import Principal

from ._procs import LogFn, ServiceStatus, is_alive, private_log, read_pid, rss_bytes, stop_pid, tail

__all__ = ["BridgeService", "DashboardService", "LagMonitorService", "ProcessorService", "ProjectorService", "StoreProcess", "settings_env"]


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as ASSESSMENT_STORE_* variables, so a child process sees the same config."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, Path):
            value = value.resolve()
        elif isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"ASSESSMENT_STORE_{name.upper()}"] = str(value)
    return env


class StoreProcess:
    """``assessment-store <name> --pid-file ...`` in the background; ready once it writes
    ``<pid-file>.ready`` (after it has started consuming)."""

    name = ""
    description = ""
    command: tuple[str, ...] = ()
    """Arguments after ``python -m assessment_store.cli``; default: the service's name."""
    principal: Principal = "admin"
    """Who the service is to Kafka on a kafka_secure stack (its own ACLs, ``stack._kafka_security``)."""

    def __init__(self, settings: Settings, instance: int = 1) -> None:
        """``instance`` > 1 runs another process of the same kind beside the first (scale-out:
        the consumer group shares the partitions among them)."""
        self.settings = settings
        self.instance = instance
        stem = self.name if instance == 1 else f"{self.name}-{instance}"
        self.run_dir = settings.data_dir.resolve() / "run"
        self.pid_file = self.run_dir / f"{stem}.pid"
        self.ready_file = self.run_dir / f"{stem}.ready"
        self.log_file = settings.data_dir.resolve() / "logs" / f"{stem}.log"

    def pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if is_alive(pid, str(self.pid_file)) else None

    def start(self, log: LogFn = print, timeout_s: float = 60.0) -> bool:
        if self.pid() is not None:
            return False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        env = {**os.environ, **settings_env(self.settings)}
        # Each process its own /metrics port (0: none), so instances of one kind never collide.
        env["ASSESSMENT_STORE_METRICS_PORT"] = str(self.metrics_port or 0)
        if self.settings.kafka_secure_mode:
            # Each service authenticates as its own principal, with the password it reads from the
            # 0600 credentials file: no password in the environment of a child.
            env["ASSESSMENT_STORE_KAFKA_USERNAME"] = self.principal
            env.pop("ASSESSMENT_STORE_KAFKA_PASSWORD", None)
        with private_log(self.log_file) as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "assessment_store.cli", *(self.command or (self.name,)),
                 "--pid-file", str(self.pid_file)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout_s
        while not self.ready_file.exists():
            if proc.poll() is not None:
                raise ServiceFailed(self.name, f"exited with code {proc.returncode}", tail(self.log_file))
            if time.monotonic() > deadline:
                stop_pid(proc.pid, str(self.pid_file))
                raise ServiceFailed(self.name, f"not ready within {timeout_s:g} s", tail(self.log_file))
            time.sleep(0.1)
        return True

    def stop(self) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        stop_pid(pid, str(self.pid_file), grace_s=20.0)
        self.pid_file.unlink(missing_ok=True)
        self.ready_file.unlink(missing_ok=True)
        return True

    @property
    def metrics_port(self) -> int | None:
        """This process's /metrics port (``Settings.service_metrics_port``), None when metrics are off."""
        return self.settings.service_metrics_port(self.name, self.instance)

    @property
    def metrics_url(self) -> str | None:
        port = self.metrics_port
        return None if port is None else f"http://{self.settings.metrics_host}:{port}/metrics"

    def status(self) -> ServiceStatus:
        pid = self.pid()
        return ServiceStatus(
            name=self.name, running=pid is not None, pid=pid, address=self.description,
            data="-", log=str(self.log_file), rss_bytes=rss_bytes(pid), metrics=self.metrics_url,
        )

    def log_path(self) -> Path:
        return self.log_file


class ProcessorService(StoreProcess):
    name = "processor"
    principal = "processor"

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"group {self.settings.processor_group}: {self.settings.commands_topic} -> {self.settings.events_topic}"


class ProjectorService(StoreProcess):
    name = "projector"
    principal = "projector"

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"group {self.settings.projector_group}: {self.settings.events_topic} -> postgres schema 'projection'"


class BridgeService(StoreProcess):
    name = "bridge"
    command = ("bridge", "run")
    principal = "bridge"

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"{self.settings.legacy_topic} -> {self.settings.commands_topic}"


class ReverseSyncService(StoreProcess):
    name = "reverse-sync"
    command = ("bridge", "reverse-sync")
    principal = "reverse-sync"

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"{self.settings.events_topic} (source store) -> {self.settings.legacy_reverse_topic}"


class DashboardService(StoreProcess):
    """The live dashboard as a background service (opt-in: ``stack up dashboard``); reads need the
    API read token, as when it runs in the foreground."""

    name = "dashboard"
    principal = "dashboard"

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"http://{self.settings.dashboard_host}:{self.settings.dashboard_port}/"


class LagMonitorService(StoreProcess):
    """Every consumer group's lag, served at /metrics for Prometheus (opt-in: ``stack up lag-monitor``)."""

    name = "lag-monitor"
    principal = "dashboard"

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"http://{self.settings.lag_monitor_host}:{self.settings.lag_monitor_port}/metrics"
