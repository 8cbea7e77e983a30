"""Helpers for testing code that uses the store, against the real services.

    from assessment_store.testing import isolated_settings, running_stack, eventually

    settings = isolated_settings(tmp_dir, port_base=29000)
    with running_stack(settings):
        ...

Nothing here mocks Kafka or PostgreSQL: ``running_stack`` starts the real local stack (or,
with ``ASSESSMENT_STORE_TEST_BACKEND=testcontainers``, Docker containers) for the settings given.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from assessment_store.core import Backoff, Event, Settings

__all__ = [
    "encode_with_newer_writer", "eventually", "isolated_settings", "newer_event_writer", "kafka_container_spec", "produce_lifecycles", "projected_event_count", "running_stack",
    "start_group_at_end", "topic_end_offsets",
]

T = TypeVar("T")


def isolated_settings(data_dir: Path, *, port_base: int, **overrides: object) -> Settings:
    """Settings for a stack of its own: its own data directory, ports port_base..+2 and /metrics
    ports port_base+20..+23.

    The jar cache stays shared (the default ``cache_dir``, or ``ASSESSMENT_STORE_CACHE_DIR``) so
    tests never download Kafka twice.
    """
    values: dict[str, object] = {
        "data_dir": data_dir,
        "kafka_port": port_base,
        "kafka_controller_port": port_base + 1,
        "postgres_port": port_base + 2,
        # Clear of the cluster's nodes (port_base + 10*(i-1) and + 1 for i <= 9).
        "lag_monitor_port": port_base + 45,
        "prometheus_port": port_base + 46,
        "alertmanager_port": port_base + 47,
        "dashboard_port": port_base + 48,
        "schema_registry_port": port_base + 49,
        # The store's processes serve /metrics on port_base+22..+25 (+26..+29 for second instances).
        "metrics_port_base": port_base + 22,
        "cache_dir": Settings().cache_dir.resolve(),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@contextlib.contextmanager
def running_stack(settings: Settings, *, keep_running: bool = False) -> Iterator[Settings]:
    """Start Kafka, PostgreSQL and the projector for ``settings``; stop them afterwards.

    Yields the settings the services actually use (with testcontainers, the mapped ports).
    """
    if settings.test_backend == "testcontainers":
        with _containers(settings) as effective:
            yield effective
        return
    from assessment_store.stack import Stack

    stack = Stack(settings)
    try:
        stack.up(log=lambda _m: None)
        yield settings
    finally:
        if not keep_running:
            stack.down(log=lambda _m: None)


def kafka_container_spec(settings: Settings) -> tuple[str, dict[str, str], dict[int, int]]:
    """Image, environment and port bindings (container -> host) of Apache's own Kafka image in
    KRaft mode, run by the testcontainers backend as a generic container.

    testcontainers' ``KafkaContainer`` expects Confluent's image (``with_kraft()`` refuses
    ``apache/kafka``). The broker must advertise the address clients connect to, which is only
    known once a port is mapped, so the host port is chosen here (``settings.kafka_port``) and
    bound to the same number."""
    port = settings.kafka_port
    env = {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    }
    return f"apache/kafka:{settings.kafka_version}", env, {9092: port}


def _kafka_container(settings: Settings) -> Any:
    from testcontainers.core.container import DockerContainer

    image, env, ports = kafka_container_spec(settings)
    container = DockerContainer(image).with_envs(**env)
    for inside, outside in ports.items():
        container = container.with_bind_ports(inside, outside)
    return container


@contextlib.contextmanager
def _containers(settings: Settings) -> Iterator[Settings]:
    """The same services from the official images, where a Docker engine exists."""
    from testcontainers.core.waiting_utils import wait_for_logs
    from testcontainers.postgres import PostgresContainer

    from assessment_store.stack import BridgeService, ProcessorService, ProjectorService
    from assessment_store.streams import ensure_topics

    with _kafka_container(settings) as kafka, PostgresContainer(
        "postgres:15", username=settings.postgres_user, dbname=settings.postgres_db
    ) as pg:
        wait_for_logs(kafka, "Kafka Server started", timeout=120)
        pg_port = int(pg.get_exposed_port(5432))
        dsn = f"postgresql://{settings.postgres_user}:{pg.password}@{pg.get_container_host_ip()}:{pg_port}/{settings.postgres_db}"
        effective = settings.model_copy(
            update={"bootstrap_servers": f"127.0.0.1:{settings.kafka_port}", "postgres_dsn": dsn,
                    "postgres_port": pg_port}
        )
        asyncio.run(ensure_topics(effective))
        services = [ProcessorService(effective), ProjectorService(effective), BridgeService(effective)]
        try:
            for service in services:
                service.start(log=lambda _m: None)
            yield effective
        finally:
            for service in reversed(services):
                service.stop()


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], *, timeout_s: float = 10.0, what: str = "condition"
) -> T:
    """Await ``probe()`` until ``accept`` holds for its result; AssertionError after ``timeout_s``.

    A bounded wait on a condition, never a fixed sleep: it returns as soon as the condition holds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    backoff = Backoff(initial_s=0.01, cap_s=0.2)  # the store's one backoff, quiet (no logger)
    while True:
        value = await probe()
        if accept(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s; last value: {value!r}")
        await asyncio.sleep(backoff.next_delay())


async def topic_end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Partition -> end offset (the offset the next record will get); ``ValueError`` when the topic
    does not exist (a test waiting on a topic nobody created would otherwise wait in vain)."""
    from assessment_store.streams import topic_end_offsets as end_offsets

    ends = await end_offsets(settings, topic)
    if not ends:
        raise ValueError(f"topic {topic!r} does not exist on {settings.kafka_bootstrap}")
    return ends


async def start_group_at_end(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """Commit ``group``'s offsets at ``topic``'s current end, so a consumer of that group reads only what
    comes next (not a long shared log from offset 0). Returns the committed offsets."""
    from aiokafka.structs import OffsetAndMetadata

    ends = await topic_end_offsets(settings, topic)
    from assessment_store.streams import kafka_client_options

    consumer = AIOKafkaConsumer(**kafka_client_options(settings, "admin"), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in ends])
        await consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in ends.items()})
    finally:
        await consumer.stop()
    return ends


async def produce_lifecycles(settings: Settings, count: int, *, prefix: str, batch: int = 5000) -> int:
    """Append ``count`` complete lifecycles (created, started, progress, completed: 4 events each)
    straight to the events topic, as a fast source of a large, valid log. Returns the event count.

    This bypasses the command processor on purpose (it measures and tests the fold and the replay,
    not the single writer), so use ids no command will touch.
    """
    from datetime import UTC, datetime, timedelta

    from aiokafka import AIOKafkaProducer

    from assessment_store.schemas import EventCodec
    from assessment_store.streams import kafka_client_options

    from assessment_store.core import Completed, Created, Event, Payload, ProgressUpdated, Started

    codec = EventCodec()
    producer = AIOKafkaProducer(**kafka_client_options(settings, "admin"), acks="all", enable_idempotence=True,
                                linger_ms=10, max_batch_size=512 * 1024)
    await producer.start()
    t0 = datetime.now(UTC)
    n = 0
    try:
        pending = []
        for i in range(count):
            aid = f"{prefix}-{i}"
            at = t0 + timedelta(microseconds=i)
            payloads: tuple[Payload, ...] = (Created({"i": i}), Started(None), ProgressUpdated(50, "half"),
                                             Completed({"ok": i}, 10))
            for v, payload in enumerate(payloads, start=1):
                value, headers = codec.encode(Event(aid, v, payload, at, at))
                pending.append(await producer.send(settings.events_topic, value, key=aid.encode(), headers=headers))
                n += 1
            if len(pending) >= batch:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return n


async def projected_event_count(settings: Settings, prefix: str) -> int:
    """How many events of assessments whose id starts with ``prefix`` the live projection holds."""
    from assessment_store.projections import connect

    conn = await connect(settings)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM projection.assessment_events WHERE assessment_id LIKE $1 || '-%'", prefix))
    finally:
        await conn.close()


def newer_event_writer() -> tuple[dict[str, Any], bytes]:
    """A newer event schema than the store's (one more optional field, ``tenant``) and the 10-byte
    single-object prefix of records written with it: a writer of a later release, for rolling-upgrade
    tests (its schema is on no list the readers have until someone publishes it)."""
    import copy
    import json

    import fastavro
    from fastavro.schema import to_parsing_canonical_form

    from assessment_store.schemas import SCHEMA_DIR, crc64_avro

    newer: dict[str, Any] = copy.deepcopy(json.loads((SCHEMA_DIR / "assessment_event.avsc").read_text()))
    newer["fields"].insert(-1, {"name": "tenant", "type": ["null", "string"], "default": None})
    fp = crc64_avro(to_parsing_canonical_form(fastavro.parse_schema(newer)).encode()).to_bytes(8, "little")
    return newer, b"\xc3\x01" + fp


def encode_with_newer_writer(newer: dict[str, Any], prefix: bytes, event: Event) -> bytes:
    """``event`` as the newer writer of ``newer_event_writer`` writes it (``tenant`` set to "t-1")."""
    import io

    import fastavro

    from assessment_store.schemas import EventCodec

    codec = EventCodec()
    current, _ = codec.encode(event)
    record = fastavro.schemaless_reader(io.BytesIO(current[10:]), codec.avro.parsed, return_record_name=True)
    assert isinstance(record, dict)
    buf = io.BytesIO()
    buf.write(prefix)
    fastavro.schemaless_writer(buf, fastavro.parse_schema(newer), {**record, "tenant": "t-1"})
    return buf.getvalue()
