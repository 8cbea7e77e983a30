"""Prometheus and Alertmanager from Debian's packages (``prometheus``, ``prometheus-alertmanager``), as
opt-in services of the local stack: ``stack up prometheus alertmanager``.

Prometheus scrapes every process of the stack that serves ``/metrics`` (``scrape_targets``) and loads the
alert rules shipped with the store (``monitoring/prometheus/alerts.yml``); Alertmanager receives what
fires. Both bind 127.0.0.1 only, keep their data under the stack's data directory, and are started,
checked and stopped like the other services (pid file, log, readiness probe).
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from assessment_store.core import MissingTool, ServiceFailed, Settings
from assessment_store.monitoring import ALERT_RULES, ScrapeTarget, prometheus_config

from ._procs import LogFn, ServiceStatus, check_port_free, is_alive, private_log, read_pid, rss_bytes, stop_pid, tail

__all__ = ["AlertmanagerService", "PrometheusService", "scrape_targets"]

_INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager (or `bash scripts/bootstrap.sh --with-prometheus`)"


def scrape_targets(settings: Settings) -> list[ScrapeTarget]:
    """Every process of the stack that serves /metrics, whether it runs or not: a target that does not
    answer is ``up == 0`` in Prometheus, which is what an operator wants to see (alert TargetDown)."""
    targets = [ScrapeTarget(job="lag-monitor", address=f"{settings.lag_monitor_host}:{settings.lag_monitor_port}")]
    for service in ("processor", "projector", "bridge", "reverse-sync"):
        port = settings.service_metrics_port(service)
        if port is not None:
            targets.append(ScrapeTarget(job=service, address=f"{settings.metrics_host}:{port}"))
    return targets


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as answer:  # noqa: S310 (a loopback URL we built)
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError):
        return False


class _DebianDaemon:
    """A daemon from a Debian package (or any one program: ``binary``), run in the background with its
    own pid file and log, ready once ``_ready_url`` answers 200."""

    name = ""
    binary = ""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.data_dir.resolve() / self.name
        self.pid_file = settings.data_dir.resolve() / "run" / f"{self.name}.pid"
        self.log_file = settings.data_dir.resolve() / "logs" / f"{self.name}.log"

    @property
    def port(self) -> int:
        raise NotImplementedError

    def _arguments(self) -> list[str]:
        raise NotImplementedError

    def _ready_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/-/ready"

    def pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        # The marker is our home directory, which every argument list names: a recycled pid of another
        # process is not mistaken for ours.
        return pid if is_alive(pid, str(self.home)) else None

    def start(self, log: LogFn = print, timeout_s: float = 60.0) -> bool:
        if self.pid() is not None:
            return False
        exe = shutil.which(self.binary)
        if exe is None:
            raise MissingTool(self.binary, _INSTALL_HINT)
        check_port_free("127.0.0.1", self.port, self.name)
        for d in (self.home, self.pid_file.parent, self.log_file.parent):
            d.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        args = self._arguments()
        with private_log(self.log_file) as out:
            proc = subprocess.Popen([exe, *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.home, start_new_session=True)
        self.pid_file.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout_s
        while not _ready(self._ready_url()):
            if proc.poll() is not None:
                raise ServiceFailed(self.name, f"exited with code {proc.returncode}", tail(self.log_file))
            if time.monotonic() > deadline:
                stop_pid(proc.pid, str(self.home))
                raise ServiceFailed(self.name, f"not ready within {timeout_s:g} s", tail(self.log_file))
            time.sleep(0.2)
        return True

    def stop(self) -> bool:
        pid = self.pid()
        self.pid_file.unlink(missing_ok=True)
        if pid is None:
            return False
        stop_pid(pid, str(self.home), grace_s=20.0)
        return True

    def status(self) -> ServiceStatus:
        pid = self.pid()
        return ServiceStatus(name=self.name, running=pid is not None, pid=pid, address=f"http://127.0.0.1:{self.port}",
                             data=str(self.home), log=str(self.log_file), rss_bytes=rss_bytes(pid))


class PrometheusService(_DebianDaemon):
    name = "prometheus"
    binary = "prometheus"

    @property
    def port(self) -> int:
        return self.settings.prometheus_port

    @property
    def config_file(self) -> Path:
        return self.home / "prometheus.yml"

    def write_config(self) -> Path:
        """(Re)write prometheus.yml for this stack: its targets, the shipped rules, its Alertmanager."""
        self.home.mkdir(parents=True, exist_ok=True)
        rules = self.home / "alerts.yml"
        # A copy beside the configuration: the data directory then says what this Prometheus evaluates,
        # whichever version of the package is installed later.
        shutil.copyfile(ALERT_RULES, rules)
        self.config_file.write_text(prometheus_config(
            scrape_targets(self.settings), scrape_interval_s=self.settings.prometheus_scrape_interval_s,
            rule_files=[rules], alertmanager=f"127.0.0.1:{self.settings.alertmanager_port}",
        ))
        return self.config_file

    def _arguments(self) -> list[str]:
        self.write_config()
        return [f"--config.file={self.config_file}", f"--storage.tsdb.path={self.home / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=15d",
                # Debian's defaults point the console templates at /etc/prometheus; ours need none.
                f"--web.console.templates={self.home / 'consoles'}",
                f"--web.console.libraries={self.home / 'console_libraries'}"]


class AlertmanagerService(_DebianDaemon):
    name = "alertmanager"
    binary = "prometheus-alertmanager"

    @property
    def port(self) -> int:
        return self.settings.alertmanager_port

    def _arguments(self) -> list[str]:
        config = self.home / "alertmanager.yml"
        # One receiver that keeps alerts for the API and the UI; a deployment adds its own (mail, chat, pager).
        config.write_text('{"route": {"receiver": "keep"}, "receivers": [{"name": "keep"}]}\n')
        return [f"--config.file={config}", f"--storage.path={self.home / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="]
