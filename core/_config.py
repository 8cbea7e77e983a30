"""The one settings class. Every value is overridable by an environment variable
prefixed ``ASSESSMENT_STORE_`` (``ASSESSMENT_STORE_KAFKA_PORT=29092``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._loop import EventLoopChoice

__all__ = ["Settings"]

_NODE_PORT_STEP = 10
"""Port distance between two nodes of a local Kafka cluster."""

_METRICS_SLOTS = {"processor": 0, "projector": 1, "bridge": 2, "reverse-sync": 3}
"""Offset of each long-running process's /metrics port from ``metrics_port_base``."""


def _user_dir(xdg_variable: str, fallback: str) -> Path:
    """``$<xdg_variable>/assessment-store``, else ``~/<fallback>/assessment-store`` (the XDG base
    directory rules): one place per user, whatever the working directory."""
    base = os.environ.get(xdg_variable, "").strip()
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / fallback
    return root / "assessment-store"


class Settings(BaseSettings):
    """Configuration of the store, its local stack and its services."""

    model_config = SettingsConfigDict(
        env_prefix="ASSESSMENT_STORE_", frozen=True, extra="forbid"
    )

    # --- where things live -------------------------------------------------
    data_dir: Path = Field(
        default_factory=lambda: _user_dir("XDG_DATA_HOME", ".local/share"),
        description="The local stack's state: Kafka log dirs, the PostgreSQL cluster and its generated passwords, "
        "pid files, logs. Per user by default ($XDG_DATA_HOME/assessment-store, else "
        "~/.local/share/assessment-store), so every process of the user finds the same stack from any directory.",
    )
    cache_dir: Path = Field(
        default_factory=lambda: _user_dir("XDG_CACHE_HOME", ".cache"),
        description="Downloaded Kafka jars and the Maven repository used to fetch them ($XDG_CACHE_HOME/assessment-store, "
        "else ~/.cache/assessment-store).",
    )

    native: Literal["auto", "off", "require"] = Field(
        default="auto", description="Whether the compiled twins of the hot codec modules are used (core/_native.py; "
        "built by scripts/build_native.py, which bootstrap.sh runs). auto: when a twin is of the current source, else "
        "the Python module; off: never; require: a missing or stale twin is an ImportError. Read from the environment "
        "when the codecs are imported, before any Settings exists, so only ASSESSMENT_STORE_NATIVE sets it.",
    )

    event_loop: EventLoopChoice = Field(
        default="auto", description="The event loop of the store's processes (core/_loop.py). auto: uvloop when "
        "installed (the server extra brings it) and Kafka is not reached over TLS, else asyncio's; asyncio: always asyncio's; uvloop: uvloop or an "
        "ImportError.",
    )

    # --- Kafka -------------------------------------------------------------
    kafka_version: str = "4.3.1"
    kafka_host: str = "127.0.0.1"
    kafka_port: int = Field(default=19092, ge=1, le=65535)
    kafka_controller_port: int = Field(default=19093, ge=1, le=65535)
    kafka_heap: str = Field(default="512m", description="JVM -Xmx of the local broker.")
    kafka_jvm_options: str = Field(
        default="-XX:TieredStopAtLevel=1",
        description="Extra JVM options of the local broker (split like a shell's words). The default compiles with "
        "C1 only: with C2, compiling still took ~20 % of a core 35 s into a benchmark, on a machine the broker "
        "shares with the store's services; without it the broker's CPU per command at 100/s fell from 7.1 to "
        "3.7 ms and sustained throughput did not move (README, Benchmarks). '' for the JVM's tiered compilation.",
    )
    bootstrap_servers: str | None = Field(
        default=None,
        description="Broker list; defaults to the local broker (kafka_host:kafka_port).",
    )
    kafka_brokers: int | None = Field(
        default=None, ge=1, le=9,
        description="Brokers of the local Kafka cluster (KRaft, each node broker and controller, on loopback). Node i "
        "listens on kafka_port + 10*(i-1), its controller on kafka_controller_port + 10*(i-1). None: as many as "
        "the data directory was formatted with (1 for a new one). Fixed at the first start of a data directory.",
    )
    kafka_secure: bool | None = Field(
        default=None,
        description="The local broker runs with authentication: one SASL_SSL listener (SCRAM-SHA-512 over TLS), "
        "credentials and certificates generated at its first start, ACLs per principal. Clients of such a stack "
        "connect with SASL_SSL and the stack's CA, as `kafka_username` or else the principal of their role. "
        "Unset: as the local broker's data directory was first started (off for a new one or another cluster).",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="How clients talk to `bootstrap_servers` (kafka_secure implies SASL_SSL).",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_username: str | None = Field(
        default=None, description="SASL user of every Kafka client of this process. Unset on a kafka_secure stack: "
        "each client authenticates as the principal of its role (processor, client, ...).",
    )
    kafka_password: SecretStr | None = Field(
        default=None, description="SASL password; unset on a kafka_secure stack: read from `<data_dir>/kafka-credentials`.",
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None, description="CA bundle (PEM) that signs the brokers' certificates; unset: the system's, or "
        "on a kafka_secure stack the stack's own CA (`<data_dir>/kafka-ca.pem`).",
    )
    kafka_ssl_certfile: Path | None = Field(default=None, description="Client certificate (PEM) for brokers that ask for one.")
    kafka_ssl_keyfile: Path | None = Field(default=None, description="Private key (PEM) of kafka_ssl_certfile.")

    # --- topics ------------------------------------------------------------
    events_topic: str = "assessments.events"
    commands_topic: str = "assessments.commands"
    outcomes_topic: str = "assessments.outcomes"
    legacy_topic: str = "legacy.assessment-events"
    reverse_topic: str | None = Field(
        default=None, description="Where the reverse sync writes the store's changes in the legacy format "
        "(None: '<legacy_topic>.reverse').")
    partitions: int = Field(default=6, ge=1, le=1000)

    # --- schema registry (docs/events.md, "The schema registry") --------------------------------
    schema_registry_url: str | None = Field(
        default=None,
        description="Base URL of a Confluent-compatible schema registry (Apicurio: '<root>/apis/ccompat/v7'). "
        "Set: writers register their schemas and write the Confluent wire format (0x00 + 4-byte schema id + "
        "Avro); unset: Avro single objects (C3 01 + fingerprint). Readers accept both either way.",
    )
    schema_registry_username: str | None = Field(default=None, description="HTTP basic auth user of the registry.")
    schema_registry_password: SecretStr | None = Field(default=None, description="Password of schema_registry_username.")
    schema_registry_timeout_s: float = Field(
        default=5.0, gt=0, le=120, description="Timeout of one request to the schema registry.")
    schema_registry_max_response_bytes: int = Field(
        default=1_000_000, ge=4096, le=64_000_000,
        description="Largest registry answer read; a longer one is refused (SchemaRegistryUnavailable).")
    schema_registry_port: int = Field(
        default=18081, ge=1, le=65535,
        description="Port of the local stack's schema registry (`stack up schema-registry`), bound to 127.0.0.1.")
    replication_factor: int = Field(
        default=1, ge=1, description="Replicas of new topics; on a local cluster of several brokers at least "
        "min(3, brokers) (see topic_replication_factor).")

    # --- PostgreSQL --------------------------------------------------------
    postgres_host: str = "127.0.0.1"
    postgres_port: int = Field(default=19432, ge=1, le=65535)
    postgres_db: str = "assessment_store"
    postgres_user: str = "assessment_store"
    postgres_dsn: str | None = Field(
        default=None,
        description="Full DSN; defaults to the local cluster (password read from the generated passfile).",
    )
    postgres_bin_dir: Path | None = Field(
        default=None, description="Directory holding initdb/pg_ctl; auto-detected when unset."
    )
    postgres_os_user: str = Field(
        default="postgres",
        description="Non-root account the local cluster runs as when the stack is started by root.",
    )

    # --- store services ----------------------------------------------------
    fetch_max_wait_ms: int = Field(
        default=50, ge=0, le=500,
        description="How long the broker may hold an empty fetch of the processor/projector. A fetch returns as "
        "soon as any of its partitions has data, so this bounds the wait only when a partition's records "
        "arrive while a fetch for the others is in flight (aiokafka keeps one in flight per broker).",
    )
    consumer_session_timeout_ms: int = Field(
        default=10_000, ge=1000,
        description="Group session timeout of the processor and projector: how long a killed process holds its "
        "partitions before the group hands them to the others.",
    )
    projector_group: str = "assessment-store-projector"
    processor_group: str = "assessment-store-processor"
    reverse_sync_group: str = "assessment-store-reverse-sync"
    reverse_sync: bool = Field(
        default=False, description="`stack up` also runs the reverse sync (store changes -> the legacy format), "
        "which dual mode and a rollback to legacy need. `stack up reverse-sync` starts it regardless.")
    default_max_retries: int | None = Field(
        default=3, ge=0, description="Retry limit for assessments created without one (None: unlimited)."
    )
    default_processing_timeout_ms: int | None = Field(
        default=None, ge=1, description="Deadline for PROCESSING when the create did not set one (None: none)."
    )
    command_timeout_s: float = Field(
        default=30.0, gt=0, description="How long a client waits for the processor's outcome of a command."
    )
    producer_flush_timeout_s: float = Field(
        default=5.0, gt=0, description="How long stopping a producer may spend delivering what it still buffers "
        "(unacknowledged records; with the broker down, aiokafka would wait for ever).",
    )
    processor_snapshots: bool = Field(
        default=True, description="The command processor keeps snapshots of its state on the compacted "
        "`processor_state_topic` and, taking a partition over, loads them and folds only the log written since "
        "(streams/_snapshot.py). Off: every takeover folds the partition's whole history.",
    )
    processor_state_topic: str | None = Field(
        default=None, description="The processor's state changelog (None: '<prefix>.processor-state' beside "
        "`commands_topic`, e.g. assessments.processor-state).",
    )
    processor_snapshot_interval_s: float = Field(
        default=1.0, ge=0, le=3600,
        description="How often the processor writes the assessments changed since its last snapshot write and a "
        "checkpoint (0: after every committed batch). A takeover folds at most about this much of the log after "
        "the snapshot.",
    )
    processor_snapshot_max_records: int = Field(
        default=20_000, ge=1, le=1_000_000,
        description="State records one snapshot write sends at most (the rest follow in the next ones, the "
        "checkpoint after the last): bounds the pause of command handling, e.g. after a full rebuild.",
    )
    processor_idempotency_max_ids: int = Field(
        default=50_000, ge=1, le=10_000_000,
        description="Command ids per partition whose outcome the processor remembers (the newest); a command "
        "re-sent with an id it no longer remembers is decided again as a new command (docs/architecture.md, "
        "\"Idempotency window\").",
    )
    processor_idempotency_window_s: float = Field(
        default=7 * 24 * 3600.0, gt=0,
        description="Age past which a command id is forgotten, whatever the count (default: the commands "
        "topic's retention, 7 days).",
    )
    projector_batch_size: int = Field(default=2000, ge=1, le=100_000)
    projector_state_cache: int = Field(
        default=50_000, ge=0, le=10_000_000,
        description="Folded states the live projector keeps in memory (the most recently changed), so a batch "
        "reads from PostgreSQL only the states it does not hold; 0: every batch reads all of them. Dropped "
        "whenever a partition is assigned or revoked and after any database error.",
    )
    replay_workers: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Processes folding a rebuild's partitions side by side (replay's first phase); 1: this process "
        "alone. Folding is CPU-bound in one process, so a second one uses a second core.",
    )
    replay_parallel_min_records: int = Field(
        default=100_000,
        ge=0,
        description="Records left to fold below which a rebuild stays in one process (a worker's start-up, about "
        "a second, would cost more than it saves).",
    )
    visibility_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a write waits to see its own event in the projection.",
    )
    max_request_bytes: int = Field(
        default=1_000_000, ge=1024, description="Upper bound on a request/result JSON document."
    )

    # --- HTTP API ----------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=1, le=65535)
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token required by every write endpoint (it also grants reads). No default: without it, "
        "writes are refused.",
    )
    api_read_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the data read endpoints (the write token works too). Without either, reads "
        "are refused; /healthz and /openapi.json stay open.",
    )
    api_max_body_bytes: int = Field(default=2_000_000, ge=1024, description="Larger request bodies get 413.")
    api_max_wait_s: float = Field(default=60.0, gt=0, description="Upper bound of the long-poll wait timeout.")

    # --- consumer-lag monitor (monitoring/, docs/monitoring.md) ------------
    lag_poll_interval_s: float = Field(
        default=5.0, gt=0, description="How often the lag monitor observes every group's offsets (`lag --watch`, "
        "`lag-monitor`).",
    )
    lag_window: int = Field(
        default=10, ge=2, le=1000,
        description="Observations per partition the status rules look at (the sliding window; oldest dropped first).",
    )
    lag_err_seconds: float = Field(
        default=300.0, gt=0,
        description="Status ERR when a partition's oldest unconsumed record is older than this and its lag is not "
        "shrinking across the window.",
    )
    lag_stopped_after_s: float = Field(
        default=60.0, gt=0,
        description="Status STALL (a live member owns the partition) or STOP (none does) when the committed offset "
        "has not moved for this long while the partition lags in every observation of the window.",
    )
    lag_fetch_timeout_s: float = Field(
        default=2.0, gt=0,
        description="How long one observation may spend reading the records at the committed offsets (their "
        "timestamps give the lag in seconds); a partition not read in time has no lag in seconds that round.",
    )
    lag_monitor_host: str = Field(default="127.0.0.1", description="Address `lag-monitor` serves /metrics on.")
    lag_monitor_port: int = Field(default=9309, ge=1, le=65535, description="Port of `lag-monitor`'s /metrics.")

    # --- Prometheus (opt-in stack services: `stack up prometheus alertmanager`) --------------------
    prometheus_port: int = Field(
        default=19090, ge=1, le=65535,
        description="Port of the stack's Prometheus (Debian's `prometheus` package), bound to 127.0.0.1.",
    )
    alertmanager_port: int = Field(
        default=19095, ge=1, le=65535,
        description="Port of the stack's Alertmanager (Debian's `prometheus-alertmanager`), bound to 127.0.0.1; "
        "its cluster listener is disabled (one instance).",
    )
    prometheus_scrape_interval_s: float = Field(
        default=5.0, gt=0, le=300, description="How often the stack's Prometheus scrapes every target.",
    )

    # --- Prometheus metrics of the store's processes (docs/monitoring.md, "Metrics") ------
    metrics_host: str = Field(default="127.0.0.1", description="Address the processes serve /metrics on.")
    metrics_port_base: int = Field(
        default=9310, ge=0, le=65535,
        description="First /metrics port of the long-running processes: processor +0, projector +1, bridge +2, "
        "reverse-sync +3; a second instance of a kind adds 4, a third 8, ... 0: no process serves /metrics.",
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="This process's own /metrics port, overriding the one derived from metrics_port_base (`stack up` "
        "sets it for each process it starts); 0: this process serves none.",
    )

    # --- dashboard (`assessment-store dashboard`, docs/monitoring.md) --------
    dashboard_host: str = Field(default="127.0.0.1", description="Address the dashboard listens on (loopback: "
                                "not open to the world unless asked).")
    dashboard_port: int = Field(default=9300, ge=1, le=65535, description="Port of the dashboard.")
    dashboard_resolution_s: float = Field(default=10.0, gt=0, le=3600,
                                          description="Seconds between two points of the dashboard's history.")
    dashboard_history_s: float = Field(default=86_400.0, gt=0, le=7 * 86_400,
                                       description="How far back the dashboard's in-memory history reaches.")
    dashboard_scrape_urls: str = Field(
        default="", description="Comma-separated Prometheus /metrics URLs the dashboard scrapes for command latency "
        "and router calls; empty: those panels say 'no data'.")
    dashboard_max_clients: int = Field(default=32, ge=1, le=1000,
                                       description="Live (SSE) connections the dashboard serves at once.")

    # --- tests -------------------------------------------------------------
    test_backend: str = Field(
        default="local",
        description="'local' starts the stack from jars and Debian binaries; 'testcontainers' uses Docker.",
    )

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")) or "@" in v.split("/", 3)[2]:
            raise ValueError("must be an http:// or https:// URL without credentials (use schema_registry_username)")
        return v

    @field_validator("test_backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        if v not in ("local", "testcontainers"):
            raise ValueError("must be 'local' or 'testcontainers'")
        return v

    def service_metrics_port(self, service: str, instance: int = 1) -> int | None:
        """The /metrics port of a long-running process (``processor``, ``projector``, ``bridge``,
        ``reverse-sync``), or None when metrics are off (``metrics_port_base`` 0) or the kind has none."""
        slot = _METRICS_SLOTS.get(service)
        if slot is None or self.metrics_port_base == 0:
            return None
        return self.metrics_port_base + slot + len(_METRICS_SLOTS) * (instance - 1)

    def own_metrics_port(self, service: str) -> int | None:
        """The port this process serves /metrics on: ``metrics_port`` if set (0: none), else the
        first instance's derived port."""
        if self.metrics_port is not None:
            return self.metrics_port or None
        return self.service_metrics_port(service)

    @property
    def legacy_reverse_topic(self) -> str:
        """Where the reverse sync writes: ``reverse_topic``, by default ``<legacy_topic>.reverse``."""
        return self.reverse_topic or f"{self.legacy_topic}.reverse"

    @property
    def kafka_cluster_size(self) -> int:
        """Brokers of the local cluster: ``kafka_brokers``, or when unset what the data directory
        was formatted with (``<data_dir>/kafka/brokers``), else 1."""
        if self.kafka_brokers is not None:
            return self.kafka_brokers
        try:
            return max(1, int((self.data_dir.resolve() / "kafka" / "brokers").read_text().strip()))
        except (OSError, ValueError):
            return 1

    def kafka_node_ports(self, node: int) -> tuple[int, int]:
        """(broker, controller) ports of local node ``node`` (1-based)."""
        step = _NODE_PORT_STEP * (node - 1)
        return self.kafka_port + step, self.kafka_controller_port + step

    @property
    def kafka_bootstrap(self) -> str:
        if self.bootstrap_servers:
            return self.bootstrap_servers
        return ",".join(f"{self.kafka_host}:{self.kafka_node_ports(n)[0]}" for n in range(1, self.kafka_cluster_size + 1))

    @property
    def topic_replication_factor(self) -> int:
        """Replicas of the topics the store creates: ``replication_factor``, raised to min(3, brokers)
        on a local cluster of several brokers (one replica per broker would lose data with a broker)."""
        if self.bootstrap_servers:
            return self.replication_factor
        return max(self.replication_factor, min(3, self.kafka_cluster_size))

    @property
    def min_insync_replicas(self) -> int:
        """``min.insync.replicas`` of those topics: 2 once there are 3 replicas, so an acknowledged
        write (acks=all) is on two brokers and survives losing any one; else 1."""
        return 2 if self.topic_replication_factor >= 3 else 1

    @property
    def kafka_secure_mode(self) -> bool:
        """Whether clients talk to the local stack's authenticated broker: ``kafka_secure``, or when
        unset, what the local broker's data directory was formatted for (never for another cluster)."""
        if self.kafka_secure is not None:
            return self.kafka_secure
        if self.bootstrap_servers is not None:
            return False
        try:
            return (self.data_dir.resolve() / "kafka" / "security").read_text().strip() == "SASL_SSL"
        except OSError:
            return False

    @property
    def kafka_tls(self) -> bool:
        """Whether the Kafka clients connect with TLS (the secure local stack, or an SSL protocol)."""
        return self.kafka_secure_mode or self.kafka_security_protocol in ("SSL", "SASL_SSL")

    @property
    def kafka_credentials_file(self) -> Path:
        """``principal:password`` lines of a kafka_secure stack, generated at its first start (mode 0600)."""
        return self.data_dir.resolve() / "kafka-credentials"

    @property
    def kafka_ca_file(self) -> Path:
        """The CA certificate of a kafka_secure stack (public: what clients verify the broker with)."""
        return self.data_dir.resolve() / "kafka-ca.pem"

    @property
    def postgres_passfile(self) -> Path:
        return self.data_dir.resolve() / "pgpass"

    @property
    def dsn(self) -> str:
        return (
            self.postgres_dsn
            or f"postgresql://{self.postgres_user}@{self.postgres_host}:{self.postgres_port}/{self.postgres_db}"
        )
