"""``TopicReader``: reads one topic from a chosen start, catches up with the log, then follows it
live (or stops at the end it found). The one reader under client subscriptions and
``assessment-store events``; it hands out raw records in batches, and the layer above decodes.

Why assigned partitions and not a consumer group: a reader of the log that rebuilds its own state
owns its checkpoint (its position is stored with the state it produced, ``PositionTable``), so a
group's committed offsets would be a second, disagreeing copy of it; a group would also hand a
partition to another member on a rebalance in the middle of a batch, and needs a group ACL on a
secured cluster. Every reader therefore assigns itself every partition (or the ones asked for),
seeks to offsets it computed, and commits nothing.

Offsets, in order of what matters:

* The start offset of each partition is computed before the first fetch and sought explicitly:
  the stored position's next offset (``Position``), the first offset at or after a time
  (``offsets_for_times``; the end offset when no record is that recent), the log start, or the
  end offset. An offset below the log start (records removed by retention) is raised to it and
  one above the end (a topic recreated under the same name) lowered to it, each with a WARNING:
  never Kafka's silent ``auto_offset_reset``.
* ``targets`` are the end offsets when the reader started. A reader that does not follow stops
  when every partition reached its target and drops what was appended after it (a ``cat`` shows
  the log as it was when it started); ``caught_up`` turns true at that point either way.
* Partitions added to the topic while reading are detected from the metadata the consumer
  refreshes every ``partition_check_s`` (``metadata_max_age_ms``) and read from their log start:
  every record in them was written after they were created. The existing partitions keep their
  positions across the re-assignment (re-sought to where the caller stands). A WARNING says so,
  because keys hash to other partitions from then on: one assessment's later records may sit in
  another partition than its earlier ones, and order is only per partition.
* A broker that goes away (restart, network) is ridden out: aiokafka reconnects and its fetcher
  retries, and a retriable error reaching us is retried after a capped backoff; an error that
  will not mend (ACL, authentication) is raised.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from datetime import datetime
from typing import Literal, TypeAlias

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ConsumerStoppedError
from aiokafka.structs import ConsumerRecord

from assessment_store.core import AsyncLifecycle, Backoff, KafkaUnavailable, Settings, ValidationError
from assessment_store.streams import Principal, kafka_client_options, kafka_principal, partition_counts, \
    start_kafka_client, translate_kafka_errors

from ._position import Position

__all__ = ["Record", "StartAt", "TopicReader"]

log = logging.getLogger("assessment_store.client.reader")

Record: TypeAlias = ConsumerRecord[bytes, bytes]
StartAt = Literal["beginning", "end"] | Position | datetime | int
"""Where a reader starts: the log start, the end, a stored position (partitions it lacks start at
the log start), the first record at or after a time, or one offset in every partition."""


class TopicReader(AsyncLifecycle):
    """Reads one topic through assigned partitions (see the module docstring). ``start``/``stop``
    are idempotent; ``next_batch`` returns None once the reader is stopped, or, without
    ``follow``, once every partition reached its target."""

    def __init__(self, settings: Settings, topic: str, *, start: StartAt = "beginning", follow: bool = True,
                 partitions: Collection[int] | None = None, principal: Principal = "client",
                 partition_check_s: float = 30.0, max_records: int = 500, poll_ms: int = 500) -> None:
        if partition_check_s <= 0 or max_records < 1 or poll_ms < 1:
            raise ValidationError("reader", "partition_check_s, max_records and poll_ms must be positive")
        if isinstance(start, Position) and start.topic != topic:
            raise ValidationError("position", f"it is a position on {start.topic!r}, not on {topic!r}")
        self.settings = settings
        self.topic = topic
        self.start_at = start
        self.follow = follow
        self.only = frozenset(partitions) if partitions is not None else None
        self.principal = principal
        self.partition_check_s = partition_check_s
        self.max_records = max_records
        self.poll_ms = poll_ms
        self.start_offsets: dict[int, int] = {}
        """partition -> the offset reading started at (partitions added later: their log start)"""
        self.targets: dict[int, int] = {}
        """partition -> end offset when reading started (for a partition added later: its start)"""
        self.caught_up = False
        """every partition has reached its target: the log as it was at start has been read"""
        self.partitions_added = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._reached: set[int] = set()
        self._stopped = False
        self._starting = asyncio.Lock()
        self._next_check = 0.0
        self._backoff = Backoff(log, initial_s=0.2, cap_s=5.0)

    @property
    def _user(self) -> str | None:
        return kafka_principal(self.settings, self.principal)

    def _what(self) -> str:
        return f"reading {self.topic}"

    async def start(self) -> None:
        async with self._starting:
            if self._consumer is not None or self._stopped:
                return
            consumer = AIOKafkaConsumer(
                **kafka_client_options(self.settings, self.principal), group_id=None, enable_auto_commit=False,
                auto_offset_reset="earliest", metadata_max_age_ms=max(1000, int(self.partition_check_s * 1000)),
            )
            try:
                await start_kafka_client(consumer, self.settings, self.principal, f"connecting to read {self.topic}")
                with translate_kafka_errors(self._what(), self._user):
                    await self._position(consumer)
            except BaseException:
                await consumer.stop()
                raise
            self._consumer = consumer
            self._next_check = time.monotonic() + self.partition_check_s

    async def stop(self) -> None:
        self._stopped = True
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def _partitions(self) -> set[int]:
        # The admin client's describe, not the consumer's metadata: an unassigned consumer's cache
        # holds no topic yet (assign() adds the topic, and the refreshes keep it current after).
        count = (await partition_counts(self.settings, [self.topic], principal=self.principal)).get(self.topic, 0)
        found = set(range(count))
        if not found:
            err = KafkaUnavailable(f"topic {self.topic!r} does not exist")
            err.retriable = False
            raise err
        return set(found)

    async def _position(self, consumer: AIOKafkaConsumer) -> None:
        """Assign, compute every start offset and the targets, and seek: all before the first fetch."""
        found = await self._partitions()
        if self.only is not None:
            missing = sorted(self.only - found)
            if missing:
                raise ValidationError("partition", f"{self.topic} has partitions 0-{max(found)}, not {missing}")
            found = set(self.only)
        tps = [TopicPartition(self.topic, p) for p in sorted(found)]
        consumer.assign(tps)
        begins = {tp.partition: off for tp, off in (await consumer.beginning_offsets(tps)).items()}
        ends = {tp.partition: off for tp, off in (await consumer.end_offsets(tps)).items()}
        wanted = await self._wanted(consumer, tps, begins, ends)
        for tp in tps:
            p = tp.partition
            off = wanted[p]
            if off < begins[p]:
                log.warning("%s[%d]: offset %d is below the log start %d (removed by retention): starting there",
                            self.topic, p, off, begins[p])
                off = begins[p]
            elif off > ends[p]:
                log.warning("%s[%d]: offset %d is past the end %d (was the topic recreated?): starting at the end",
                            self.topic, p, off, ends[p])
                off = ends[p]
            self.start_offsets[p] = off
            self.targets[p] = ends[p]
            consumer.seek(tp, off)
        self._reached = {p for p in found if self.start_offsets[p] >= self.targets[p]}
        self._pause_reached(consumer)

    async def _wanted(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition], begins: dict[int, int],
                      ends: dict[int, int]) -> dict[int, int]:
        start = self.start_at
        if start == "beginning":
            return dict(begins)
        if start == "end":
            return dict(ends)
        if isinstance(start, Position):
            stored = start.offset_map()
            return {tp.partition: stored.get(tp.partition, begins[tp.partition]) for tp in tps}
        if isinstance(start, datetime):
            if start.tzinfo is None:
                raise ValidationError("from_time", "must carry a time zone (e.g. datetime.now(UTC))")
            ms = max(0, int(start.timestamp() * 1000))
            found = await consumer.offsets_for_times({tp: ms for tp in tps})
            # No record at or after that time in a partition: everything there is older, start at its end.
            return {tp.partition: (found[tp].offset if found.get(tp) is not None else ends[tp.partition])
                    for tp in tps}
        if isinstance(start, int) and not isinstance(start, bool):
            return {tp.partition: start for tp in tps}
        raise ValidationError("start", f"{start!r} is not 'beginning', 'end', a Position, a datetime or an offset")

    def _pause_reached(self, consumer: AIOKafkaConsumer) -> None:
        if not self.follow:
            # Nothing past the targets is read: pause the partitions that reached theirs.
            consumer.pause(*(TopicPartition(self.topic, p) for p in self._reached))
        if len(self._reached) == len(self.targets):
            self.caught_up = True

    async def next_batch(self) -> list[Record] | None:
        """The next records (any partitions, each partition's in log order); an empty list when
        nothing arrived within ``poll_ms``; None when the reader is done (stopped, or not
        following and at the end).

        Cancellation-safe: nothing is awaited between the fetch and the return, so records taken
        from the consumer always reach the caller."""
        await self.start()
        consumer = self._consumer
        if consumer is None:
            return None
        if not self.caught_up:
            await self._update_reached(consumer)
        if not self.follow and self.caught_up:
            return None
        if self.follow and self.only is None and time.monotonic() >= self._next_check:
            await self._check_partitions(consumer)
        try:
            with translate_kafka_errors(self._what(), self._user):
                fetched = await consumer.getmany(timeout_ms=self.poll_ms, max_records=self.max_records)
        except ConsumerStoppedError:
            return None
        except KafkaUnavailable as e:
            if not e.retriable or self._stopped:
                raise
            await self._backoff.failed(f"{self.topic}: no records fetched", e)
            return []
        self._backoff.succeeded(f"{self.topic}: fetching again")
        batch: list[Record] = []
        for tp, records in fetched.items():
            target = self.targets.get(tp.partition)
            if not self.follow and target is not None:
                records = [r for r in records if r.offset < target]
            batch.extend(records)
        return batch

    async def _update_reached(self, consumer: AIOKafkaConsumer) -> None:
        for p, target in self.targets.items():
            if p in self._reached:
                continue
            tp = TopicPartition(self.topic, p)
            with translate_kafka_errors(self._what(), self._user):
                # The fetch position moves past gaps (compacted or control records) too.
                at = await consumer.position(tp)
            if at >= target:
                self._reached.add(p)
        self._pause_reached(consumer)

    async def _check_partitions(self, consumer: AIOKafkaConsumer) -> None:
        self._next_check = time.monotonic() + self.partition_check_s
        now = consumer.partitions_for_topic(self.topic) or set()
        added = sorted(set(now) - self.targets.keys())
        if not added:
            return
        log.warning("%s: partitions %s were added while reading; reading them from their start. Keys hash to "
                    "other partitions from now on: one assessment's records may be split across partitions.",
                    self.topic, added)
        with translate_kafka_errors(self._what(), self._user):
            old = {p: await consumer.position(TopicPartition(self.topic, p)) for p in self.targets}
            tps = [TopicPartition(self.topic, p) for p in sorted({*self.targets, *added})]
            # A new assignment forgets positions: re-seek the old partitions before awaiting anything
            # (a cancellation in between must not leave them to auto_offset_reset).
            consumer.assign(tps)
            for p, off in old.items():
                consumer.seek(TopicPartition(self.topic, p), off)
            new = [TopicPartition(self.topic, p) for p in added]
            begins = await consumer.beginning_offsets(new)
        for tp in new:
            consumer.seek(tp, begins[tp])
            self.start_offsets[tp.partition] = begins[tp]
            self.targets[tp.partition] = begins[tp]
            self._reached.add(tp.partition)
        self.partitions_added += len(added)
