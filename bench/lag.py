"""What one cycle of the lag monitor costs, and whether its memory stays flat over an hour of cycles.

    .venv/bin/python -m bench.lag [--groups 200] [--partitions 50] [--cycles 720] [--port-base 29592]

Starts a private broker (data in .data/bench-lag-<port base>), creates one topic of ``--partitions``
partitions with records of known timestamps, and ``--groups`` consumer groups that each commit an
offset on every partition (half of the partitions lagging, so every cycle also reads the timestamp of
the first unconsumed record: the lag in seconds). Then, in one run:

* ``bare reads`` (the baseline): the Kafka requests a cycle cannot do without, done with the admin
  client and nothing else: list the groups, each group's committed offsets, the end offsets;
* ``monitor cycle``: ``LagMonitor.poll()``: the same reads plus describing the groups, the log starts,
  the first-record timestamps, the sliding windows and the status of every partition and group.

Prints CPU seconds (``time.process_time``, this process) and wall seconds per cycle for both, the
ratio, and then runs ``--cycles`` monitor cycles back to back (720 = an hour at the default 5 s
interval) and prints the resident memory at each quarter. Targets: one cycle of 200 groups x 50
partitions <= 1 s of CPU; RSS flat across the quarters.

``--big-group N`` also times a cycle over one group consuming a topic of N partitions (10,000: a group
far larger than any of the store's own), a few of them lagging.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewPartitions
from aiokafka.structs import OffsetAndMetadata
from rich.console import Console
from rich.table import Table

from assessment_store.core import Settings
from assessment_store.monitoring import LagMonitor
from assessment_store.streams import TopicSpec, admin_client, ensure_topics, kafka_client_options
from assessment_store.testing import isolated_settings

from ._services import private_services

ROOT = Path(__file__).resolve().parent.parent
console = Console()
TOPIC = "bench-lag"
RECORDS_PER_PARTITION = 20


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _prepare(settings: Settings, groups: int, partitions: int) -> None:
    await ensure_topics(settings, [TopicSpec(TOPIC, partitions, {})])
    producer = AIOKafkaProducer(**kafka_client_options(settings, "admin"), linger_ms=5)
    await producer.start()
    try:
        hour_ago_ms = int((time.time() - 3600) * 1000)
        for p in range(partitions):
            for i in range(RECORDS_PER_PARTITION):
                await producer.send(TOPIC, b"x", partition=p, timestamp_ms=hour_ago_ms + i * 1000)
        await producer.flush()
    finally:
        await producer.stop()
    for g in range(groups):
        # A consumer with an assignment (no group membership) may commit for its group: the monitor
        # then sees a group with offsets and no members, as after a consumer's shutdown.
        consumer = AIOKafkaConsumer(**kafka_client_options(settings, "admin"), group_id=f"bench-lag-{g:03d}",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(TOPIC, p) for p in range(partitions)]
            consumer.assign(tps)
            # Even partitions caught up, odd ones 5 records behind.
            await consumer.commit({tp: OffsetAndMetadata(RECORDS_PER_PARTITION - 5 * (tp.partition % 2), "")
                                   for tp in tps})
        finally:
            await consumer.stop()


async def _bare_cycle(settings: Settings, partitions: int) -> None:
    async with admin_client(settings, "admin") as admin:
        listed = await admin.list_consumer_groups()
        names = [g[0] for g in listed if str(g[0]).startswith("bench-lag-")]
        for name in names:
            await admin.list_consumer_group_offsets(name)
    consumer = AIOKafkaConsumer(**kafka_client_options(settings, "admin"))
    await consumer.start()
    try:
        await consumer.end_offsets([TopicPartition(TOPIC, p) for p in range(partitions)])
    finally:
        await consumer.stop()


async def _timed(fn: object, rounds: int) -> tuple[list[float], list[float]]:
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        await fn()  # type: ignore[operator]
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return cpu, wall


async def _run(settings: Settings, groups: int, partitions: int, rounds: int, cycles: int) -> None:
    console.print(f"preparing {groups} groups x {partitions} partitions ...")
    await _prepare(settings, groups, partitions)
    monitor = LagMonitor(settings, group_glob="bench-lag-*")
    first = await monitor.poll()
    lagging = sum(1 for g in first.groups for p in g.partitions if p.lag)
    assert len(first.groups) == groups and lagging == groups * (partitions // 2), (len(first.groups), lagging)

    bare_cpu, bare_wall = await _timed(lambda: _bare_cycle(settings, partitions), rounds)
    mon_cpu, mon_wall = await _timed(monitor.poll, rounds)
    t = Table(title=f"one cycle, {groups} groups x {partitions} partitions (median of {rounds})")
    for col in ("variant", "CPU s", "wall s", "CPU vs bare"):
        t.add_column(col, justify="right")
    b, m = statistics.median(bare_cpu), statistics.median(mon_cpu)
    t.add_row("bare reads (baseline)", f"{b:.3f}", f"{statistics.median(bare_wall):.3f}", "1.00")
    t.add_row("monitor cycle", f"{m:.3f}", f"{statistics.median(mon_wall):.3f}", f"{m / b:.2f}")
    console.print(t)
    console.print(f"target: monitor cycle <= 1 s of CPU: {'met' if m <= 1.0 else 'NOT met'} ({m:.3f} s)")

    quarters = Table(title=f"resident memory over {cycles} cycles")
    quarters.add_column("after cycle", justify="right")
    quarters.add_column("RSS MiB", justify="right")
    quarters.add_row("0", f"{_rss_mib():.1f}")
    for i in range(1, cycles + 1):
        await monitor.poll()
        if i % max(1, cycles // 4) == 0:
            quarters.add_row(str(i), f"{_rss_mib():.1f}")
    console.print(quarters)


async def _big_group(settings: Settings, partitions: int, rounds: int) -> None:
    topic = f"bench-lag-big-{partitions}"
    console.print(f"creating {topic} ({partitions:,} partitions) ...")
    t0 = time.perf_counter()
    # The controller takes at most 10,000 records per request (a topic record, one per partition, its
    # configs): a topic this large is created with part of its partitions, then grown in steps.
    step = 5_000
    await ensure_topics(settings, [TopicSpec(topic, min(partitions, step), {})])
    async with admin_client(settings) as admin:
        for total in range(2 * step, partitions + step, step):
            await admin.create_partitions({topic: NewPartitions(total_count=min(total, partitions))})
    console.print(f"created in {time.perf_counter() - t0:.1f} s")
    producer = AIOKafkaProducer(**kafka_client_options(settings, "admin"), linger_ms=5)
    await producer.start()
    try:
        # CreateTopics answers before every broker's metadata holds 10,000 new partitions' leaders:
        # wait (bounded) until the client's metadata has them all, or the first send fails.
        deadline = time.monotonic() + 300
        while len(producer.client.cluster.partitions_for_topic(topic) or ()) < partitions:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{topic}: the broker's metadata did not list {partitions} partitions in 300 s")
            await producer.client.force_metadata_update()
            await asyncio.sleep(0.5)
        console.print(f"leaders elected for all partitions after {time.perf_counter() - t0:.1f} s")
        lagging = range(0, partitions, max(1, partitions // 20))
        for p in lagging:
            await producer.send(topic, b"x", partition=p, timestamp_ms=int((time.time() - 600) * 1000))
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(**kafka_client_options(settings, "admin"), group_id="bench-lag-big",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.commit({tp: OffsetAndMetadata(0, "") for tp in tps})
    finally:
        await consumer.stop()
    monitor = LagMonitor(settings, group_glob="bench-lag-big", topic=topic)
    snapshot = await monitor.poll()
    (group,) = snapshot.groups
    assert len(group.partitions) == partitions, len(group.partitions)
    cpu, wall = await _timed(monitor.poll, rounds)
    console.print(f"one group of {partitions:,} partitions ({len(lagging)} lagging): "
                  f"{statistics.median(cpu):.3f} s CPU, {statistics.median(wall):.3f} s wall per cycle, "
                  f"status {group.status.value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5, help="timed cycles per variant")
    parser.add_argument("--cycles", type=int, default=720, help="cycles for the memory check")
    parser.add_argument("--port-base", type=int, default=29592)
    parser.add_argument("--big-group", type=int, default=0, metavar="N",
                        help="also time one group over a topic of N partitions (e.g. 10000)")
    args = parser.parse_args()
    settings = isolated_settings(ROOT / ".data" / f"bench-lag-{args.port_base}", port_base=args.port_base)
    with private_services(settings, ["kafka"], log=console.print):
        asyncio.run(_run(settings, args.groups, args.partitions, args.rounds, args.cycles))
        if args.big_group:
            asyncio.run(_big_group(settings, args.big_group, args.rounds))


if __name__ == "__main__":
    main()
