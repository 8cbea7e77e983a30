"""`stack up --brokers 3`: a three-broker KRaft cluster on loopback, topics with three replicas and
min.insync.replicas=2, and one broker killed -9 under load."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator

import pytest

from assessment_store import AssessmentStore, Settings, State
from assessment_store.testing import eventually, isolated_settings
from assessment_store.projections import connect
from assessment_store.stack import Stack
from assessment_store.stack._procs import is_alive, wait_until
from assessment_store.streams._kafka import admin_client

from .conftest import PORT_BASE, ROOT
from .test_projector_resilience import _lifecycle_with_retries

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def cluster() -> Iterator[Settings]:
    """A private stack whose Kafka is three brokers (ports base+800, +810, +820), purged before and after."""
    settings = isolated_settings(ROOT / ".data" / f"test-cluster-{PORT_BASE}", port_base=PORT_BASE + 800,
                                 kafka_brokers=3, consumer_session_timeout_ms=6000)
    stack = Stack(settings)
    stack.purge(log=lambda _m: None)
    stack.up(["kafka", "postgres", "processor", "projector"], log=lambda _m: None)
    try:
        yield settings
    finally:
        stack.purge(log=lambda _m: None)


async def _partitions(settings: Settings, topic: str) -> list[dict[str, object]]:
    async with admin_client(settings) as admin:
        described = await admin.describe_topics([topic])
    partitions: list[dict[str, object]] = described[0]["partitions"]
    return partitions


async def test_topics_have_three_replicas_and_two_must_be_in_sync(cluster: Settings) -> None:
    """Every partition of the store's topics has replicas on the three brokers; min.insync.replicas is 2."""
    assert cluster.kafka_bootstrap.count(",") == 2
    assert (cluster.topic_replication_factor, cluster.min_insync_replicas) == (3, 2)
    for topic in (cluster.commands_topic, cluster.events_topic, cluster.outcomes_topic):
        for p in await _partitions(cluster, topic):
            assert sorted(p["replicas"]) == [1, 2, 3], (topic, p)  # type: ignore[call-overload]
    settings_without_size = cluster.model_copy(update={"kafka_brokers": None})
    assert settings_without_size.kafka_cluster_size == 3  # later commands find the size in the data dir


async def test_a_broker_killed_under_load_loses_no_acknowledged_write(cluster: Settings) -> None:
    """kill -9 of one broker under load: clients and services carry on, no acknowledged write is lost,
    and the restarted broker catches up (every replica back in sync)."""
    stack = Stack(cluster)
    services = {"processor": stack.processor.pid(), "projector": stack.projector.pid()}
    victim = stack.kafka.nodes[1]
    tag = f"cluster-{uuid.uuid4().hex[:6]}"
    acked: dict[str, int] = {}
    async with AssessmentStore(cluster) as store:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 240

        async def worker(w: int) -> None:
            for i in range(30):
                await _lifecycle_with_retries(store, f"{tag}-{w}-{i}", acked, deadline)

        load = [asyncio.create_task(worker(w)) for w in range(4)]
        try:
            await eventually(lambda: _acked(acked), lambda n: n >= 40, timeout_s=120, what="load running")
            pid = victim.pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            assert await asyncio.to_thread(wait_until, lambda: not is_alive(pid), 20.0)
            at_kill = await _acked(acked)
            await eventually(lambda: _acked(acked), lambda n: n >= at_kill + 40, timeout_s=120,
                             what="writes acknowledged with a broker down")
            assert await asyncio.to_thread(stack.up, ["kafka"], lambda _m: None) == {"kafka": True}
        finally:
            await asyncio.gather(*load)
    assert len(acked) == 120 and all(v == 4 for v in acked.values())

    async def caught_up() -> bool:
        parts = [p for t in (cluster.commands_topic, cluster.events_topic, cluster.outcomes_topic)
                 for p in await _partitions(cluster, t)]
        return all(sorted(p["isr"]) == [1, 2, 3] for p in parts)  # type: ignore[call-overload]

    await eventually(caught_up, lambda ok: ok, timeout_s=120, what="the restarted broker back in sync")
    conn = await connect(cluster)
    try:
        rows = await conn.fetch("SELECT assessment_id, version, state FROM projection.assessments"
                                " WHERE assessment_id LIKE $1", tag + "-%")
    finally:
        await conn.close()
    projected = {r["assessment_id"]: (r["version"], r["state"]) for r in rows}
    assert projected == {aid: (4, State.COMPLETED.value) for aid in acked}
    assert {"processor": stack.processor.pid(), "projector": stack.projector.pid()} == services, \
        "a service exited during the broker outage"


async def _acked(acked: dict[str, int]) -> int:
    return sum(acked.values())
