"""The lag monitor against the session's real broker and PostgreSQL: exact lag in offsets, lag in
seconds from record timestamps set far in the past, empty partitions, groups without commits,
deleted records, clock skew, the projector's lag from its offsets table, the monitor's lifecycle,
a broker it cannot reach, and the `lag --json` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewPartitions, NewTopic, RecordsToDelete
from aiokafka.structs import OffsetAndMetadata

from assessment_store import AssessmentStore, KafkaUnavailable, Settings
from assessment_store.monitoring import GroupLag, LagMonitor, LagSnapshot, PartitionLag, observe_once
from assessment_store.projections import connection, projector_offsets
from assessment_store.stack import settings_env
from assessment_store.streams import admin_client, kafka_client_options
from assessment_store.testing import eventually

pytestmark = pytest.mark.stack

N = 10
AGE_S = 3600.0
"""Records are timestamped an hour ago (one second apart): the record a lag in seconds was timed
from is told apart from its neighbours without doubt, whatever the machine's speed."""


def _name(kind: str) -> str:
    return f"lag-{kind}-{uuid.uuid4().hex[:8]}"


async def _topic(settings: Settings, partitions: int = 2) -> str:
    name = _name("topic")
    async with admin_client(settings) as admin:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    return name


async def _produce(settings: Settings, topic: str, timestamps_ms: list[int], partition: int = 0) -> None:
    producer = AIOKafkaProducer(**kafka_client_options(settings, "admin"), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for i, ts in enumerate(timestamps_ms):
            # One at a time, awaited: offsets follow the list's order exactly.
            await producer.send_and_wait(topic, f"r{i}".encode(), partition=partition, timestamp_ms=ts)
    finally:
        await producer.stop()


def _past(base_s: float) -> list[int]:
    """N timestamps (ms), record i at base_s + i seconds."""
    return [round((base_s + i) * 1000) for i in range(N)]


async def _commit(settings: Settings, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(**kafka_client_options(settings, "admin"), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await consumer.stop()


def _group(snap: LagSnapshot, name: str) -> GroupLag:
    g = snap.group(name)
    assert g is not None, f"group {name} not in {[x.group for x in snap.groups]}"
    return g


def _partition(g: GroupLag, topic: str, p: int) -> PartitionLag:
    return next(x for x in g.partitions if (x.topic, x.partition) == (topic, p))


BASES: dict[str, float] = {}
"""topic -> the timestamp (epoch s) of its record 0; record i is i seconds later."""


def _expected_seconds(topic: str, offset: int, before: float, after: float, value: float | None) -> bool:
    """Whether ``value`` is the age of record ``offset`` as seen at some time between ``before`` and ``after``."""
    ts = BASES[topic] + offset
    return value is not None and before - ts - 0.01 <= value <= after - ts + 0.01


@pytest.fixture
async def topic(stack_settings: Settings) -> AsyncIterator[str]:
    """A fresh two-partition topic: partition 0 holds N records timestamped an hour ago, partition 1 is empty."""
    name = await _topic(stack_settings)
    BASES[name] = round(time.time() - AGE_S, 3)  # whole milliseconds, as the records carry them
    await _produce(stack_settings, name, _past(BASES[name]))
    yield name
    async with admin_client(stack_settings) as admin:
        await admin.delete_topics([name])


async def test_lag_of_a_committing_group_in_offsets_and_seconds(stack_settings: Settings, topic: str) -> None:
    """A group committed at K: lag == N - K, lag seconds == now - ts(record K); its empty partition lags 0, 0 s."""
    group, k = _name("group"), 4
    await _commit(stack_settings, group, {TopicPartition(topic, 0): k, TopicPartition(topic, 1): 0})
    before = time.time()
    snap = await observe_once(stack_settings, group_glob=group)
    after = time.time()
    g = _group(snap, group)
    assert (g.source, g.members) == ("kafka", 0)
    p0, p1 = _partition(g, topic, 0), _partition(g, topic, 1)
    assert (p0.committed, p0.log_start, p0.end, p0.lag) == (k, 0, N, N - k)
    assert p0.oldest_unconsumed_ts is not None and p0.lag_seconds is not None
    expected = snap.observed_at - p0.oldest_unconsumed_ts if snap.observed_at else None
    assert p0.lag_seconds == pytest.approx(expected)
    assert p0.oldest_unconsumed_ts == pytest.approx(BASES[topic] + k, abs=0.001)
    assert _expected_seconds(topic, k, before, after, p0.lag_seconds), p0.lag_seconds
    assert not p0.clock_skew
    assert (p1.committed, p1.end, p1.lag, p1.lag_seconds) == (0, 0, 0, 0.0)
    assert g.lag == N - k


async def test_a_group_without_commits_lags_from_the_log_start(stack_settings: Settings, topic: str) -> None:
    """A live member assigned the partitions but never committing: committed None, lag N from the log start, owned."""
    group = _name("nocommit")
    consumer = AIOKafkaConsumer(**kafka_client_options(stack_settings, "admin"), group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    consumer.subscribe([topic])
    await consumer.start()
    try:
        async def assignment() -> set[TopicPartition]:
            return set(consumer.assignment())  # the coordinator joins in the background
        await eventually(assignment, lambda a: len(a) == 2, timeout_s=30, what="the member's assignment")

        snap = await eventually(lambda: observe_once(stack_settings, group_glob=group),
                                lambda s: s.group(group) is not None and s.group(group).members == 1,  # type: ignore[union-attr]
                                timeout_s=30, what="the group described with its member")
        g = _group(snap, group)
        p0 = _partition(g, topic, 0)
        assert (p0.committed, p0.lag, p0.owned) == (None, N, True)
        assert snap.observed_at is not None
        assert p0.lag_seconds == pytest.approx(snap.observed_at - BASES[topic], abs=0.002)  # record 0, the log start
        assert _partition(g, topic, 1).lag == 0
        assert g.state == "Stable"
    finally:
        await consumer.stop()


async def test_deleted_records_time_the_first_record_after_the_commit(stack_settings: Settings, topic: str) -> None:
    """Records before offset 6 deleted, the group committed at 3: lag counts end - 3, seconds from record 6, the first left."""
    group = _name("deleted")
    tp = TopicPartition(topic, 0)
    async with admin_client(stack_settings) as admin:
        await admin.delete_records({tp: RecordsToDelete(6)})
    await _commit(stack_settings, group, {tp: 3})
    snap = await observe_once(stack_settings, group_glob=group)
    p0 = _partition(_group(snap, group), topic, 0)
    assert (p0.log_start, p0.committed, p0.lag) == (6, 3, N - 3)
    assert snap.observed_at is not None
    assert p0.lag_seconds == pytest.approx(snap.observed_at - (BASES[topic] + 6), abs=0.002)


async def test_a_record_from_the_future_is_clamped_and_flagged(stack_settings: Settings) -> None:
    """A record timestamped an hour ahead: lag 1 but 0 seconds, flagged as clock skew and counted."""
    name, group = await _topic(stack_settings, 1), _name("skew")
    try:
        await _produce(stack_settings, name, [int((time.time() + AGE_S) * 1000)])
        await _commit(stack_settings, group, {TopicPartition(name, 0): 0})
        snap = await observe_once(stack_settings, group_glob=group)
        p0 = _partition(_group(snap, group), name, 0)
        assert (p0.lag, p0.lag_seconds, p0.clock_skew, snap.clock_skewed) == (1, 0.0, True, 1)
    finally:
        async with admin_client(stack_settings) as admin:
            await admin.delete_topics([name])


async def test_the_projector_lag_comes_from_postgresql(stack_settings: Settings, store: AssessmentStore) -> None:
    """The projector's group is read from projector_offsets (source postgres): the same offsets, lag 0 once folded."""
    await store.create_assessment({"subject": "lag"})
    s = stack_settings

    async def read() -> tuple[LagSnapshot, dict[tuple[str, int], int]]:
        async with connection(s) as conn:
            stored = {(r.topic, r.partition): r.next_offset for r in await projector_offsets(conn, s.projector_group)}
        return await observe_once(s, group_glob=s.projector_group, topic=s.events_topic), stored

    def settled(found: tuple[LagSnapshot, dict[tuple[str, int], int]]) -> bool:
        snap, stored = found
        g = snap.group(s.projector_group)
        return g is not None and g.lag == 0 and all(
            p.committed == stored.get((p.topic, p.partition)) for p in g.partitions)

    snap, stored = await eventually(read, settled, timeout_s=30, what="the projector caught up")
    g = _group(snap, s.projector_group)
    assert g.source == "postgres" and not snap.errors
    assert {p.topic for p in g.partitions} == {s.events_topic}
    assert len(g.partitions) == s.partitions
    assert any(p.committed for p in g.partitions) and stored
    assert all(p.owned for p in g.partitions)  # the running projector is the group's member


async def test_monitor_windows_rates_new_and_deleted_partitions(stack_settings: Settings) -> None:
    """The monitor picks up a partition added while it runs, computes the consumption rate, and drops a deleted topic."""
    name, group = await _topic(stack_settings, 1), _name("monitor")
    await _produce(stack_settings, name, _past(time.time() - AGE_S))
    tp0, tp1 = TopicPartition(name, 0), TopicPartition(name, 1)
    monitor = LagMonitor(stack_settings, group_glob=group)
    await _commit(stack_settings, group, {tp0: 2})
    first = await monitor.poll()
    assert [p.partition for p in _group(first, group).partitions] == [0]
    async with admin_client(stack_settings) as admin:
        await admin.create_partitions({name: NewPartitions(2)})
    await _commit(stack_settings, group, {tp0: 6, tp1: 0})
    second = await monitor.poll()
    g = _group(second, group)
    assert [p.partition for p in g.partitions] == [0, 1]
    p0 = _partition(g, name, 0)
    assert first.observed_at is not None and second.observed_at is not None
    assert p0.consumption_rate == pytest.approx(4 / (second.observed_at - first.observed_at))
    async with admin_client(stack_settings) as admin:
        await admin.delete_topics([name])
    gone = await eventually(monitor.poll, lambda s: s.group(group) is None or not s.group(group).partitions,  # type: ignore[union-attr]
                            timeout_s=30, what="the deleted topic gone from the group")
    assert all(p.topic != name for g2 in gone.groups for p in g2.partitions)


async def test_an_unreachable_broker_leaves_the_last_figures_marked_stale(stack_settings: Settings, topic: str) -> None:
    """A failed poll raises KafkaUnavailable; latest keeps the last figures and time, marked stale and unreachable."""
    group = _name("stale")
    await _commit(stack_settings, group, {TopicPartition(topic, 0): 1})
    monitor = LagMonitor(stack_settings, group_glob=group)
    good = await monitor.poll()
    assert (good.reachable, good.stale) == (True, False)
    monitor.settings = stack_settings.model_copy(update={"bootstrap_servers": "127.0.0.1:9"})  # nothing listens
    with pytest.raises(KafkaUnavailable):
        await monitor.poll()
    stale = monitor.latest
    assert (stale.reachable, stale.stale, stale.observed_at) == (False, True, good.observed_at)
    assert _partition(_group(stale, group), topic, 0).lag == N - 1 and stale.errors
    monitor.settings = stack_settings
    assert (await monitor.poll()).stale is False


async def test_monitor_start_and_stop_are_idempotent_and_it_polls_in_the_background(
        stack_settings: Settings, topic: str) -> None:
    """start twice, polls on its own at the interval, stop twice; an async with does both."""
    group = _name("bg")
    await _commit(stack_settings, group, {TopicPartition(topic, 0): 0})
    monitor = LagMonitor(stack_settings, group_glob=group, interval_s=0.2)
    await monitor.start()
    await monitor.start()
    try:
        await eventually(lambda: _latest(monitor), lambda s: s.group(group) is not None and monitor.polls >= 2,
                         timeout_s=30, what="two background polls")
    finally:
        await monitor.stop()
        await monitor.stop()
    polls = monitor.polls
    assert _group(monitor.latest, group).lag == N
    async with LagMonitor(stack_settings, group_glob=group, interval_s=0.2) as m2:
        await eventually(lambda: _latest(m2), lambda s: s.observed_at is not None, timeout_s=30, what="a poll")
    assert monitor.polls == polls  # stopped: polls no more


async def _latest(monitor: LagMonitor) -> LagSnapshot:
    return monitor.latest


def test_lag_command_prints_json(stack_settings: Settings, topic: str) -> None:
    """`assessment-store lag --group G --topic T --json` prints the group's partitions with lag and seconds."""
    import asyncio

    group = _name("cli")
    asyncio.run(_commit(stack_settings, group, {TopicPartition(topic, 0): 7}))
    env = {**os.environ, **settings_env(stack_settings), "COLUMNS": "200"}
    before = time.time()
    r = subprocess.run([sys.executable, "-m", "assessment_store.cli", "lag", "--group", group, "--topic", topic, "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    after = time.time()
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (g,) = doc["groups"]
    assert (g["group"], g["source"], g["lag"]) == (group, "kafka", N - 7)
    p0 = next(p for p in g["partitions"] if p["partition"] == 0)
    assert (p0["committed"], p0["end"], p0["lag"]) == (7, N, N - 7)
    assert _expected_seconds(topic, 7, before, after, p0["lagSeconds"]), p0["lagSeconds"]
    assert doc["reachable"] is True and doc["stale"] is False
    table = subprocess.run([sys.executable, "-m", "assessment_store.cli", "lag", "--group", group], capture_output=True,
                           text=True, env=env, timeout=120)
    assert table.returncode == 0 and group in table.stdout and "ERR" in table.stdout, table.stdout + table.stderr


async def test_lag_monitor_serves_prometheus_metrics(stack_settings: Settings, topic: str) -> None:
    """`assessment-store lag-monitor --port P` serves kafka_consumergroup_lag and the status of a group at /metrics."""
    import asyncio

    import httpx

    from .conftest import PORT_BASE

    group, port = _name("metrics"), PORT_BASE + 57
    await _commit(stack_settings, group, {TopicPartition(topic, 0): 3})
    env = {**os.environ, **settings_env(stack_settings), "ASSESSMENT_STORE_LAG_POLL_INTERVAL_S": "0.5"}
    proc = subprocess.Popen([sys.executable, "-m", "assessment_store.cli", "lag-monitor", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        async def scrape() -> str:
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=2)).text
            except httpx.HTTPError:
                return ""
        line = f'kafka_consumergroup_lag{{consumergroup="{group}",partition="0",topic="{topic}"}} {float(N - 3)}'
        try:
            text = await eventually(scrape, lambda t: line in t, timeout_s=60, what="the group's lag at /metrics")
        except AssertionError:
            proc.terminate()
            raise AssertionError((await asyncio.to_thread(proc.communicate, timeout=30))[1].decode()[-3000:])
        assert f'assessment_store_consumergroup_status{{consumergroup="{group}",status="ERR"}} 1.0' in text
        assert "assessment_store_lag_monitor_up 1.0" in text
    finally:
        proc.terminate()
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, stderr.decode()
