"""One local Apache Kafka 4 broker in KRaft mode (combined broker + controller), from Maven jars."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
import os
import shutil
import shlex
import subprocess
import time
import uuid
from importlib import resources
from pathlib import Path

from assessment_store.core import DownloadFailed, MissingTool, ServiceFailed, Settings

from ._kafka_security import apply_acls, ensure_credentials, ensure_tls, format_scram_args, secure_broker_props, secure_topics
from ._procs import (
    LogFn, ServiceStatus, check_port_free, is_alive, private_log, read_pid, rss_bytes, stop_pid, tail,
)

__all__ = ["KafkaNode", "KafkaService"]

_JAVA_HINT = "apt-get install -y openjdk-17-jre-headless  (Kafka 4 needs Java 17 or newer)"
_MVN_HINT = "apt-get install -y maven"
_PRIVATE_UMASK = 0o077
"""Files the broker creates (segments, indexes, checkpoints, its logs): owner-only."""


def _kraft_cluster_id() -> str:
    # Kafka's Uuid text form: 16 random bytes, URL-safe base64 without padding. Like Kafka's own
    # Uuid.randomUuid, never one starting with "-": the storage tool would parse it as an option.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaNode:
    """One node of the local cluster: a KRaft broker and controller in one JVM. Node 1 of a one-node
    cluster is what earlier releases ran as the only broker: same ports, same directories."""

    def __init__(self, settings: Settings, node: int = 1, size: int = 1) -> None:
        self.settings = settings
        self.node = node
        self.size = size
        self.name = "kafka" if node == 1 else f"kafka-{node}"
        data = settings.data_dir.resolve()
        self.home = data / self.name
        self.log_dir = self.home / "log-dirs"
        self.logs = data / "logs" if node == 1 else data / "logs" / self.name
        self.pid_file = self.home / "kafka.pid"
        self.libs = settings.cache_dir.resolve() / f"kafka-{settings.kafka_version}" / "libs"
        self.port, self.controller_port = settings.kafka_node_ports(node)
        self.cluster_home = data / "kafka"
        """Node 1's home, which holds what the nodes share: the cluster id and the cluster's size."""

    # --- jars -------------------------------------------------------------------

    def ensure_jars(self, log: LogFn = print) -> Path:
        """The broker's classpath directory, downloaded with mvn on first use."""
        marker = self.libs / ".complete"
        if marker.exists():
            return self.libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise MissingTool("mvn", _MVN_HINT)
        log(f"fetching Apache Kafka {self.settings.kafka_version} jars with mvn into {self.libs} (first run only)")
        staging = self.libs.with_name("libs.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        pom = resources.files("assessment_store.stack") / "kafka" / "pom.xml"
        with resources.as_file(pom) as pom_path:
            cmd = [
                mvn, "-B", "-q", "-f", str(pom_path),
                f"-Dmaven.repo.local={self.settings.cache_dir.resolve() / 'm2'}",
                f"-Dkafka.version={self.settings.kafka_version}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            out = (proc.stdout + proc.stderr).strip().splitlines()
            raise DownloadFailed(f"Apache Kafka {self.settings.kafka_version}", "\n".join(out[-25:]))
        (staging / ".complete").write_text(self.settings.kafka_version + "\n")
        # Rename last so an interrupted download is never mistaken for a complete one.
        shutil.rmtree(self.libs, ignore_errors=True)
        staging.rename(self.libs)
        return self.libs

    # --- config -----------------------------------------------------------------

    def _write_config(self, creds: dict[str, str] | None = None) -> Path:
        """server.properties; with ``creds`` (the secure mode) the SASL_SSL listener, TLS and ACLs too."""
        s = self.settings
        voters = ",".join(f"{n}@{s.kafka_host}:{s.kafka_node_ports(n)[1]}" for n in range(1, self.size + 1))
        # Internal topics get a replica per broker up to 3, and (from 3 on) need 2 in sync: like the
        # store's own topics (Settings.min_insync_replicas), nothing acknowledged lives on one broker.
        replicas, min_isr = str(min(3, self.size)), str(min(2, self.size))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{s.kafka_host}:{self.port},CONTROLLER://{s.kafka_host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{s.kafka_host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.log_dir),
            "num.partitions": str(s.partitions),
            "auto.create.topics.enable": "false",
            # Fewer partitions of the internal topics start faster.
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        if creds is not None:
            props.update(secure_broker_props(s, creds, ensure_tls(s, self.cluster_home / "tls"), self.port,
                                             self.controller_port))
        path = self.home / "server.properties"
        # It holds the admin password in the secure mode: owner-only in any mode.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in props.items()))
        path.chmod(0o600)
        return path

    def _check_mode(self) -> None:
        """Refuse to start a log directory in the other mode than it was formatted in: SCRAM users
        exist only if created at format time, and a secured directory must never be served open."""
        marker = self.cluster_home / "security"
        if not (self.log_dir / "meta.properties").exists():
            return  # not formatted yet: kafka_secure decides
        formatted = marker.read_text().strip() if marker.exists() else "PLAINTEXT"
        wanted = "SASL_SSL" if self.settings.kafka_secure else "PLAINTEXT"
        if self.settings.kafka_secure is not None and formatted != wanted:
            raise ServiceFailed(
                self.name, f"{self.log_dir} was formatted for {formatted} clients, and kafka_secure="
                f"{str(self.settings.kafka_secure).lower()} asks for {wanted}: set ASSESSMENT_STORE_KAFKA_SECURE="
                f"{str(formatted == 'SASL_SSL').lower()}, or use another data directory (or `stack purge --yes`)")

    # --- lifecycle --------------------------------------------------------------

    def pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if is_alive(pid, str(self.home)) else None

    def launch(self, log: LogFn = print) -> subprocess.Popen[bytes] | None:
        """Start this node's JVM unless it runs (None then), without waiting: the nodes of a cluster
        must all be running before any can answer, since a controller quorum needs a majority."""
        if self.pid() is not None:
            return None
        java = shutil.which("java")
        if java is None:
            raise MissingTool("java", _JAVA_HINT)
        libs = self.ensure_jars(log)
        check_port_free(self.settings.kafka_host, self.port, f"{self.name} (broker listener)")
        check_port_free(self.settings.kafka_host, self.controller_port, f"{self.name} (controller listener)")
        # The log segments hold every request and result: readable by this account only, like
        # PostgreSQL's data directory. The directory mode keeps other accounts out of what exists
        # already; the broker's umask (below) makes every file it creates 0600.
        for home in {self.cluster_home, self.home}:
            home.mkdir(parents=True, exist_ok=True)
            home.chmod(0o700)
        self.logs.mkdir(parents=True, exist_ok=True)
        self._check_mode()
        self._check_size()
        creds = ensure_credentials(self.settings) if self.settings.kafka_secure_mode else None
        config = self._write_config(creds)
        log4j = resources.files("assessment_store.stack") / "kafka" / "log4j2.properties"
        base = [
            java,
            "-cp", f"{libs}/*",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={self.logs}",
        ]
        if not (self.log_dir / "meta.properties").exists():
            self._format(base, config, creds)
        with private_log(self.logs / "kafka.out") as out:
            proc = subprocess.Popen(
                [
                    java,
                    f"-Xms{min_heap(self.settings.kafka_heap)}", f"-Xmx{self.settings.kafka_heap}",
                    "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
                    *shlex.split(self.settings.kafka_jvm_options),
                    *base[1:],
                    "kafka.Kafka", str(config),
                ],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.home, umask=_PRIVATE_UMASK,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        """Until this node answers a metadata request on its own listener (a KRaft broker opens it
        only once it has caught up with the quorum's metadata); ServiceFailed when it exits or the
        deadline passes."""
        while True:
            if proc.poll() is not None:
                raise ServiceFailed(
                    self.name, f"the broker exited with code {proc.returncode}",
                    tail(self.logs / "kafka.log") + "\n" + tail(self.logs / "kafka.out", 10),
                )
            if asyncio.run(self._answers_metadata()):
                return
            if time.monotonic() > deadline:
                stop_pid(proc.pid, str(self.home))
                raise ServiceFailed(self.name, "no metadata answer in time", tail(self.logs / "kafka.log"))
            time.sleep(0.2)

    def _check_size(self) -> None:
        """A KRaft cluster's controller quorum is fixed when it is formatted: refuse to start it with
        another number of nodes than it was formatted with."""
        if not (self.cluster_home / "log-dirs" / "meta.properties").exists():
            return
        try:
            formatted = int((self.cluster_home / "brokers").read_text().strip())
        except (OSError, ValueError):
            formatted = 1
        if formatted != self.size:
            raise ServiceFailed(
                self.name, f"{self.settings.data_dir.resolve()} holds a Kafka cluster of {formatted} broker(s), not "
                f"{self.size}: set ASSESSMENT_STORE_KAFKA_BROKERS={formatted} (or leave it unset), or use another "
                "data directory (or `stack purge --yes`)")

    def _cluster_id(self) -> str:
        """One id for every node of the cluster, made by the first node formatted."""
        path = self.cluster_home / "cluster-id"
        if not path.exists():
            path.write_text(_kraft_cluster_id() + "\n")
        return path.read_text().strip()

    def _format(self, base: list[str], config: Path, creds: dict[str, str] | None) -> None:
        args = ["kafka.tools.StorageTool", "format", "-t", self._cluster_id(), "-c", str(config)]
        argfile = self.home / "format.args"
        if creds is not None:
            # The passwords go through a java @argfile (0600), never the command line that any
            # account can read in /proc while the tool runs.
            fd = os.open(argfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("\n".join([*args, *format_scram_args(creds)]) + "\n")
            args = [f"@{argfile}"]
        try:
            fmt = subprocess.run([*base, *args], capture_output=True, text=True, umask=_PRIVATE_UMASK)
        finally:
            argfile.unlink(missing_ok=True)
        if fmt.returncode != 0:
            out = fmt.stdout + fmt.stderr
            for pw in (creds or {}).values():
                out = out.replace(pw, "***")
            raise ServiceFailed(self.name, "formatting KRaft storage failed", out[-3000:])
        if self.node == 1:
            (self.cluster_home / "security").write_text("SASL_SSL\n" if creds is not None else "PLAINTEXT\n")
            (self.cluster_home / "brokers").write_text(f"{self.size}\n")

    async def _answers_metadata(self) -> bool:
        from aiokafka import AIOKafkaClient
        from aiokafka.errors import KafkaError

        from assessment_store.streams import kafka_client_options

        options = {**kafka_client_options(self.settings, "admin"), "bootstrap_servers": f"{self.settings.kafka_host}:{self.port}"}
        client = AIOKafkaClient(**options, request_timeout_ms=2000)
        # Refused connections are the expected answer while the broker boots; do not log each one.
        quiet = logging.getLogger("aiokafka")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            await client.bootstrap()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            quiet.setLevel(level)
            await client.close()

    def stop(self) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        stop_pid(pid, str(self.home), grace_s=45.0)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> ServiceStatus:
        pid = self.pid()
        return ServiceStatus(
            name=self.name,
            running=pid is not None,
            pid=pid,
            address=f"{self.settings.kafka_host}:{self.port}{' SASL_SSL' if self.settings.kafka_secure_mode else ''}"
                    f" (controller :{self.controller_port})",
            data=str(self.log_dir),
            log=str(self.logs / "kafka.log"),
            rss_bytes=rss_bytes(pid),
        )

    def log_path(self) -> Path:
        return self.logs / "kafka.log"




class KafkaService:
    """The local Kafka cluster: ``Settings.kafka_cluster_size`` nodes (1 by default), started and
    stopped together; ``start`` also starts any node that is down (a node killed by a test, say)."""

    name = "kafka"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        size = settings.kafka_cluster_size
        self.nodes = [KafkaNode(settings, n, size) for n in range(1, size + 1)]
        first = self.nodes[0]
        self.home, self.log_dir, self.logs = first.home, first.log_dir, first.logs

    def ensure_jars(self, log: LogFn = print) -> Path:
        return self.nodes[0].ensure_jars(log)

    def _check_mode(self) -> None:
        self.nodes[0]._check_mode()

    def pid(self) -> int | None:
        """Node 1's pid (the only node of a one-broker stack)."""
        return self.nodes[0].pid()

    def start(self, log: LogFn = print, timeout_s: float = 90.0) -> bool:
        """Start the nodes that are not running; True when this call started any."""
        launched = [(node, proc) for node in self.nodes if (proc := node.launch(log)) is not None]
        deadline = time.monotonic() + timeout_s
        try:
            for node, proc in launched:
                node.wait_ready(proc, deadline)
        except BaseException:
            for node, _proc in launched:
                node.stop()
            raise
        if launched and self.settings.kafka_secure_mode:
            asyncio.run(self._secure_setup(log))
        return bool(launched)

    async def _secure_setup(self, log: LogFn) -> None:
        """Topics and ACLs of the secure mode, as ``admin``; both idempotent, so on every start."""
        from assessment_store.streams import ensure_topics

        created = await ensure_topics(self.settings, secure_topics(self.settings), principal="admin")
        if created:
            log(f"created topics: {', '.join(created)}")
        await apply_acls(self.settings)

    def stop(self) -> bool:
        # All nodes at once: stopped one after the other, the last ones wait for a controller
        # quorum that is already gone and are only killed at the end of their grace period.
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            stopped = list(pool.map(lambda node: node.stop(), self.nodes))
        return any(stopped)

    def status(self) -> ServiceStatus:
        if len(self.nodes) == 1:
            return self.nodes[0].status()
        rows = [node.status() for node in self.nodes]
        down = [r.name for r in rows if not r.running]
        address = ", ".join(r.address for r in rows) + (f"; down: {', '.join(down)}" if down else "")
        return ServiceStatus(
            name=self.name, running=not down, pid=rows[0].pid, address=f"{len(rows)} brokers: {address}",
            data=str(self.log_dir), log=str(self.logs / "kafka.log"),
            rss_bytes=sum(r.rss_bytes or 0 for r in rows) or None,
        )

    def log_path(self) -> Path:
        return self.logs / "kafka.log"


def min_heap(heap: str) -> str:
    """Initial heap: a quarter of the maximum, so an idle broker stays small."""
    unit = heap[-1].lower() if heap[-1].isalpha() else ""
    number = int(heap[:-1] if unit else heap)
    return f"{max(1, number // 4)}{unit}"
