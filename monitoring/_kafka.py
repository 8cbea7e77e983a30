"""One read of the cluster: every consumer group (its state, members, assignments and committed
offsets), the log start and end of each partition they consume, and the timestamp of the first
record at or after each committed offset. Short-lived clients, translated errors."""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from assessment_store.core import Settings
from assessment_store.streams import (
    Principal, admin_client, kafka_client_options, kafka_principal, translate_kafka_errors,
)

__all__ = ["ClusterRead", "GroupRead", "Override", "read_cluster"]

PRINCIPAL: Principal = "dashboard"
"""The role the monitor reads as: on a kafka_secure stack it may describe every group and read
every store topic, and commit only in groups of its own (it never commits)."""

_PROBE_FETCH_BYTES = 64 * 1024
"""Per-partition fetch size of the timestamp probe: it needs one record, not a batch of them (the
broker still returns a first batch larger than this whole)."""


@dataclass(frozen=True)
class Override:
    """Committed offsets read elsewhere than Kafka (the projector's, from PostgreSQL): they replace
    the group's Kafka offsets, and every partition of ``topics`` counts as the group's."""

    committed: Mapping[TopicPartition, int]
    topics: tuple[str, ...]


@dataclass(frozen=True)
class GroupRead:
    group: str
    state: str
    members: int
    owned: frozenset[TopicPartition]
    committed: Mapping[TopicPartition, int | None]
    """Every partition the group consumes (committed to, or assigned to a member), with its
    committed offset (None: never committed)."""
    overridden: bool = False


@dataclass(frozen=True)
class ClusterRead:
    groups: tuple[GroupRead, ...]
    starts: Mapping[TopicPartition, int]
    ends: Mapping[TopicPartition, int]
    first_records: Mapping[tuple[TopicPartition, int], tuple[int, float]] = field(default_factory=dict)
    """(partition, committed offset) -> (offset, timestamp in epoch seconds) of the first record at
    or after that offset, for every lagging partition whose record could be read in time."""


def _decode_assignment(raw: bytes) -> list[TopicPartition]:
    if not raw:
        return []  # a member between join and sync has no assignment yet
    assignment: Any = ConsumerProtocolMemberAssignment.decode(raw)
    return list(assignment.partitions())


async def _describe(admin: Any, groups: list[str]) -> dict[str, tuple[str, int, frozenset[TopicPartition]]]:
    """group -> (state, member count, partitions assigned to its members)."""
    described: dict[str, tuple[str, int, frozenset[TopicPartition]]] = {}
    if not groups:
        return described
    # One group per request: aiokafka parses a DescribeGroups v3 answer with the v2 schema, which
    # lacks the trailing authorized_operations of each group, so a second group in the same answer
    # is read misaligned ("Buffer underrun"). Alone, the group's leftover four bytes are ignored.
    answers = await asyncio.gather(*(admin.describe_consumer_groups([g]) for g in groups))
    for response in (r for answer in answers for r in answer):
        for g in response.groups:
            error_code, name, state, protocol_type, members = g[0], g[1], g[2], g[3], g[5]
            if error_code:
                # Not describable this way (a group of the newer consumer protocol, or an ACL):
                # its committed offsets still count, without state or members.
                continue
            owned: set[TopicPartition] = set()
            if protocol_type == "consumer":  # other protocols (connect) do not assign partitions
                for member in members:
                    owned.update(_decode_assignment(member[4]))
            described[name] = (state, len(members), frozenset(owned))
    return described


async def _committed(admin: Any, group: str) -> dict[TopicPartition, int]:
    found = await admin.list_consumer_group_offsets(group)
    # -1: no offset (only returned for partitions asked for by name; kept out either way).
    return {tp: int(meta.offset) for tp, meta in found.items() if meta.offset >= 0}


async def read_cluster(
    settings: Settings, *, group_glob: str = "*", topic: str | None = None,
    overrides: Mapping[str, Override] | None = None, known_records: Mapping[tuple[TopicPartition, int],
                                                                         tuple[int, float]] | None = None,
) -> ClusterRead:
    """Read every group matching ``group_glob`` (and the groups of ``overrides`` that match it), for
    the partitions of ``topic`` only when given. ``known_records``: first records already read by an
    earlier poll (a record at an offset never changes), not fetched again."""
    overrides = overrides or {}
    user = kafka_principal(settings, PRINCIPAL)
    async with admin_client(settings, PRINCIPAL) as admin:
        with translate_kafka_errors("reading the consumer groups", user):
            listed = {str(g[0]) for g in await admin.list_consumer_groups()}
            names = sorted(n for n in listed | set(overrides) if fnmatch.fnmatchcase(n, group_glob))
            described = await _describe(admin, [n for n in names if n in listed])
            committed = await asyncio.gather(*(_committed(admin, n) for n in names if n in listed))
            kafka_committed = dict(zip([n for n in names if n in listed], committed))
            topics = set(await admin.list_topics())
            wanted_topics = {tp.topic for c in kafka_committed.values() for tp in c}
            wanted_topics |= {tp.topic for d in described.values() for tp in d[2]}
            wanted_topics |= {t for o in overrides.values() for t in o.topics}
            wanted_topics = {t for t in wanted_topics & topics if topic is None or t == topic}
            counts = {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(sorted(wanted_topics))
                      if not d.get("error_code")} if wanted_topics else {}

    def exists(tp: TopicPartition) -> bool:
        partition: int = tp.partition
        # Offsets of a deleted topic (or of partitions beyond its count) may linger in a group until
        # the coordinator drops them: they are not lag of anything that exists.
        return 0 <= partition < counts.get(tp.topic, 0)

    groups: list[GroupRead] = []
    for name in names:
        state, members, owned = described.get(name, ("Unknown", 0, frozenset()))
        owned = frozenset(tp for tp in owned if exists(tp))
        override = overrides.get(name)
        per_tp: dict[TopicPartition, int | None]
        if override is not None:
            per_tp = {TopicPartition(t, p): None for t in override.topics for p in range(counts.get(t, 0))}
            per_tp.update({tp: o for tp, o in override.committed.items() if exists(tp)})
        else:
            per_tp = {tp: None for tp in owned}
            per_tp.update({tp: o for tp, o in kafka_committed.get(name, {}).items() if exists(tp)})
        groups.append(GroupRead(name, state, members, owned, dict(sorted(per_tp.items())), override is not None))

    partitions = sorted({tp for g in groups for tp in g.committed})
    if not partitions:
        return ClusterRead(tuple(groups), {}, {})
    consumer = AIOKafkaConsumer(
        **kafka_client_options(settings, PRINCIPAL), group_id=None, enable_auto_commit=False,
        # A committed offset below the log start (retention or delete-records removed it): the probe
        # then reads from the log start, where the group's next record now is.
        auto_offset_reset="earliest", max_partition_fetch_bytes=_PROBE_FETCH_BYTES, fetch_max_wait_ms=100,
    )
    with translate_kafka_errors("reading partition offsets and record timestamps", user):
        await consumer.start()
        try:
            # The end offsets are read after the committed ones: a commit landing in between can
            # only make the lag look larger, never negative (clamped at 0 regardless).
            starts = await consumer.beginning_offsets(partitions)
            ends = await consumer.end_offsets(partitions)
            wanted: dict[TopicPartition, set[int]] = {}
            for g in groups:
                for tp, c in g.committed.items():
                    offset = starts[tp] if c is None else c
                    if offset < ends[tp] and (tp, offset) not in (known_records or {}):
                        wanted.setdefault(tp, set()).add(offset)
            found = await _first_records(consumer, wanted, ends, settings.lag_fetch_timeout_s)
        finally:
            await consumer.stop()
    return ClusterRead(tuple(groups), starts, ends, found)


async def _first_records(
    consumer: AIOKafkaConsumer, wanted: Mapping[TopicPartition, set[int]], ends: Mapping[TopicPartition, int],
    timeout_s: float,
) -> dict[tuple[TopicPartition, int], tuple[int, float]]:
    """(partition, offset) -> (offset, timestamp) of the first record at or after each wanted offset.

    The first record *at or after*: on a compacted topic the record at the committed offset may be
    gone, and the next one is the oldest the group has yet to consume. One consumer position per
    partition at a time, so a partition wanted at several offsets (several groups) takes several
    rounds, ascending. Whatever is not read before the deadline is left out (lag in seconds
    unknown for that round), so a slow or silent partition bounds the poll instead of stalling it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    found: dict[tuple[TopicPartition, int], tuple[int, float]] = {}
    queues = {tp: sorted(offsets) for tp, offsets in wanted.items()}
    while queues and loop.time() < deadline:
        targets = {tp: offsets.pop(0) for tp, offsets in queues.items()}
        queues = {tp: offsets for tp, offsets in queues.items() if offsets}
        consumer.assign(list(targets))
        for tp, offset in targets.items():
            consumer.seek(tp, offset)
        pending = dict(targets)
        while pending and (left := deadline - loop.time()) > 0:
            batches: dict[TopicPartition, Sequence[Any]] = await consumer.getmany(
                *pending, timeout_ms=max(1, int(left * 1000)))
            for tp, records in batches.items():
                target = pending.get(tp)
                if target is None:
                    continue
                # Records below the target may come with the batch that holds it: skipped.
                first = next((r for r in records if r.offset >= target), None)
                if first is not None:
                    found[(tp, target)] = (int(first.offset), first.timestamp / 1000.0)
                    del pending[tp]
                    consumer.pause(tp)
            # Records between the target and the end may all be gone (compaction, transaction
            # markers only): a position that reached the end means there is nothing to time.
            for tp in [tp for tp in pending if await consumer.position(tp) >= ends[tp]]:
                del pending[tp]
    return found
