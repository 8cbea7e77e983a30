"""Folds the events topic into PostgreSQL with an exactly-once effect.

Ordering and offsets, the invariants everything else leans on:

* Events of one assessment share a partition (the key is the assessment id), so within a
  partition they arrive in log order. Versions are checked, not trusted: an event is applied
  only when its version is exactly ``current + 1``; a lower version is a duplicate (counted,
  kept in ``projection.anomalies``, not applied) and a higher one is a gap (likewise, never
  applied out of order).
* The consumer never trusts Kafka's committed offsets. The next offset per partition is stored
  in ``projection.projector_offsets`` *in the same transaction* as the rows the batch produced,
  and every partition assignment seeks to that stored offset. A crash anywhere before COMMIT
  rolls back rows and offsets together; after COMMIT both are durable (``synchronous_commit``
  stays on: a client reads a row as "visible" only once it survives a PostgreSQL crash).
  Re-reading a batch after a crash is therefore harmless, and nothing is skipped.
* Seek before the first fetch, always. ``_positioned`` maps a partition to the next offset we
  expect, and only our own seek to the stored offset (or a batch we committed) puts a partition
  in it. A newly assigned partition is paused before the rebalance listener awaits anything, and
  records of a partition not in ``_positioned`` (fetched at Kafka's advisory offsets in the
  moment before our seek) or below its expected offset are dropped, never folded. A failed
  seek in the listener (PostgreSQL down: aiokafka swallows the listener's exception) leaves the
  partition paused and unpositioned; the fold loop positions it once PostgreSQL answers.
* After any database error the batch in flight may or may not have committed, so every owned
  partition is forgotten (paused, dropped from ``_positioned``) and, once PostgreSQL answers
  again (capped exponential backoff, logged), re-sought to the stored offsets; the consumer's
  in-memory position is never trusted across an error. A PostgreSQL outage never ends the loop.
* A value PostgreSQL refuses (``DataRejected``: NUL in text, a number out of range) never blocks
  the others. The batch is re-folded in one transaction with a savepoint per group of
  assessments, bisected down to the refused ones; of each, every event before the first refused
  one is applied and that event and all later ones are held (``projection.quarantine_held``,
  not applied) with the assessment in ``projection.quarantine``, counted and logged at ERROR;
  the other assessments and the offsets commit together as usual. Records are held by
  assessment, never by batch, so live and rebuilt projections quarantine the same events (the
  projection stays a pure function of the log). A refused outcome record becomes an anomaly.
  ``refold`` re-applies a quarantined assessment's held events under the swap lock and bumps the
  generation, so every live projector reconnects and reloads the quarantine list.
* Offsets only move forward (``GREATEST``). During a rebalance two projectors may briefly fold
  the same records: each new state is written only if its row is still at the version it was
  folded from (``public.fold_batch``, migration 003), else the whole batch rolls back and is
  re-read and re-folded, where the version check makes it a no-op.
* States are read from PostgreSQL before a batch is folded, except those this projector itself
  committed last (``_states``, up to ``projector_state_cache``): it is their partition's only
  folder while it owns it, so what it committed is what is stored. The cache is only filled
  after a commit, and emptied on any error in a batch (committed or not, raced or refused), on
  every seek to the stored offsets (an assignment, a reconnection, a swap) and on a revocation
  (the next owner folds on, and the partition may come back). A state can still go stale while
  two projectors fold one partition in a rebalance's overlap, and the verdict on the next event of
  that assessment stays the one a read state would give: this projector reads its partition on
  from its own last commit, so that event follows, in the log, the last one it folded for that
  assessment. Either it is the next version, applied from the cached state under the version
  guard, which fails the batch if the other projector stored it first (retried, reading every
  state), or it is a duplicate or a gap of the log itself, which the other projector, reading the
  same log, could not have applied past either.
* The whole batch is one transaction: its state rows and the outcomes topic's rows are COPYed
  (binary) into the session's temporary staging tables, then one call of ``public.fold_staged``
  stores them with the anomalies and offsets (``sql/011_fold_staged.sql``), then the history rows
  are COPYed straight into ``assessment_events`` and the accepted commands' outcomes (read off
  their events) straight into ``command_outcomes`` (after the call, for the reasons in
  ``_write_staged``; through staging too when one is already stored: ``_store``, where an event id
  an earlier event holds becomes a ``reused_event_id`` anomaly,
  ``sql/013_replies_and_reused_ids.sql``, and the outcome stored first is kept), then any held
  records and fences, then COMMIT. A small batch (at most ``_SMALL_BATCH`` records, none held, no fence: a few
  commands at a time at low rates) is one statement instead, ``public.fold_batch`` with every row
  as arrays, which PostgreSQL runs as its own transaction: one round trip where the staging path
  costs six (BEGIN, three COPYs, the call, COMMIT). A refused batch is re-folded through
  ``public.fold_batch`` (the same statements on arrays) in savepoints, as described above.
* Offsets are also committed to Kafka after the PostgreSQL COMMIT, only so that standard lag
  tools see the group's position; they are never read back (see "seek before the first fetch").
* ``pg_notify`` runs inside the transaction, so a waiter is woken only for committed state.
* A record whose writer schema cannot be resolved (``UnresolvableSchema``: its fingerprint is on
  neither the reader's list nor the schemas topic, or it cannot be read into the reader's schema)
  is never skipped. Before decoding, unknown fingerprints are looked up on the schemas topic
  (``streams.SchemaResolver``, cached). One still unresolvable stops its partition there: the
  batch commits that partition's records before it (and every other partition's), then the
  partition is forgotten and paused like after a database error, so the next seek to the stored
  offset (the unresolvable record's) comes after ``_SCHEMA_RETRY_S``; each stop is logged at ERROR
  and counted. A corrupt value (not a schema problem) stays an ``undecodable`` anomaly. A rebuild
  raises the error instead: a projection missing a record must not be swapped in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import itertools
import json
import logging
import math
import time
from datetime import UTC, datetime, timedelta
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from assessment_store.core import (
    PAYLOAD_TYPES,
    bulk_collection,
    SIZE_BUCKETS,
    Assessment,
    AssessmentStoreError,
    AsyncLifecycle,
    BackendError,
    Backoff,
    CodecError,
    DatabaseUnavailable,
    DataRejected,
    Event,
    EventSource,
    Histogram,
    KafkaUnavailable,
    MetricFamily,
    Outcome,
    Payload,
    Settings,
    State,
    UnresolvableSchema,
    counter,
    counter_by,
    evolve,
    histogram,
)
from assessment_store.schemas import EventCodec, OutcomeCodec
from assessment_store.streams import (
    COMMAND_OFFSET_HEADER,
    REPLY_HEADER,
    LogFence,
    PartitionStops,
    SchemaResolver,
    Verdict,
    ensure_topics,
    header,
    is_reply_channel,
    kafka_client_options,
    partition_counts,
    translate_kafka_errors,
)

from ._db import LIVE_SCHEMA, check_schema_name, create_pool, migrate, translate_db_errors
from ._fold_rows import HISTORY_COLUMNS, OUTCOME_COLUMNS, STAGING_TABLES, AnomalyRow, AssessmentRow, HistoryRow, OffsetRow, OutcomeRow, columns, staging_ddl
from ._queries import fetch_assessments

__all__ = ["CHANGES_CHANNEL", "OUTCOMES_CHANNEL", "FoldStats", "Projector", "ProjectorStats"]

log = logging.getLogger("assessment_store.projector")

_FOLD_ATTEMPTS = 10
_SMALL_BATCH = 64
"""records up to which a batch is stored by one ``fold_batch`` statement rather than COPY staging"""
_SCHEMA_RETRY_S = 5.0
"""how long a partition stopped at an unresolvable record stays paused before it is read again"""

CHANGES_CHANNEL = "assessment_store_changes"
"""NOTIFY channel; payload ``<assessment_id>|<version>|<state>``."""
OUTCOMES_CHANNEL = "assessment_store_outcomes"
"""NOTIFY channel; payload ``<command_id>|<assessment_id>|<accepted 1/0>|<version or empty>``."""


@dataclass
class FoldStats:
    applied: int = 0
    duplicates: int = 0
    gaps: int = 0
    undecodable: int = 0
    batches: int = 0
    quarantined: int = 0
    """assessments newly put in quarantine (a value PostgreSQL refused)"""
    held: int = 0
    """events of quarantined assessments kept aside, not applied"""
    unstorable_outcomes: int = 0
    unpositioned_dropped: int = 0
    """records fetched before our seek (at Kafka's offsets) or below the stored offset: dropped"""
    fenced: int = 0
    """records of a processor that had lost its partition (after a later owner's fence): not folded"""
    reused_ids: int = 0
    """events applied whose event id another event already holds in the history: no history row of
    their own, a ``reused_event_id`` anomaly each (``sql/013_replies_and_reused_ids.sql``)"""

    unfoldable: int = 0
    """events the state machine refused to apply (kept as ``unfoldable`` anomalies)"""
    unresolvable: int = 0
    """stops of a partition at a record whose writer schema cannot be resolved (never skipped)"""
    states_cached: int = 0
    """states a batch took from the projector's own cache (``Projector._states``)"""
    states_read: int = 0
    """states a batch asked PostgreSQL for (found or new)"""

    def add(self, other: FoldStats) -> None:
        for f in dataclasses.fields(FoldStats):  # the counts only (ProjectorStats adds histograms)
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class ProjectorStats(FoldStats):
    """A projector's counts since its process started, and its batch histograms."""

    batch_records: Histogram = field(default_factory=lambda: Histogram(SIZE_BUCKETS))
    """records (events and outcomes) per folded batch"""
    batch_seconds: Histogram = field(default_factory=Histogram)
    """seconds to fold one batch (decode, fold, write to PostgreSQL, commit)"""

    def metric_families(self) -> list[MetricFamily]:
        """The Prometheus view of these counts (read at each scrape; docs/monitoring.md, "Metrics")."""
        p = "assessment_store_projector_"
        return [
            counter(p + "events_folded_total", "Events applied to the projection", self.applied),
            counter(p + "batches_total", "Batches folded", self.batches),
            counter_by(p + "anomalies_total", "Records not applied, by anomaly kind (as in the anomalies table)",
                       ["kind"], {"duplicate": self.duplicates, "version_gap": self.gaps,
                                  "unfoldable": self.unfoldable, "undecodable": self.undecodable,
                                  "fenced": self.fenced, "unstorable_outcome": self.unstorable_outcomes,
                                  "reused_event_id": self.reused_ids}),
            counter(p + "quarantined_total", "Assessments put in quarantine (PostgreSQL refused a value)",
                    self.quarantined),
            counter(p + "held_events_total", "Events of quarantined assessments kept aside", self.held),
            counter(p + "unresolvable_schema_total", "Partition stops at a record whose writer schema is unresolvable",
                    self.unresolvable),
            counter(p + "unpositioned_dropped_total", "Records fetched before the seek to the stored offsets",
                    self.unpositioned_dropped),
            counter_by(p + "states_total", "States a batch folded from: the projector's cache, or read from PostgreSQL",
                       ["source"], {"cache": self.states_cached, "postgres": self.states_read}),
            histogram(p + "batch_records", "Records per folded batch", self.batch_records),
            histogram(p + "batch_seconds", "Time to fold one batch", self.batch_seconds),
        ]


@dataclass
class _Batch:
    events: list[tuple[ConsumerRecord[bytes, bytes], Event]] = field(default_factory=list)
    outcomes: list[tuple[ConsumerRecord[bytes, bytes], Outcome]] = field(default_factory=list)
    anomalies: list[AnomalyRow] = field(default_factory=list)
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    fences: list[tuple[str, int, int, int]] = field(default_factory=list)
    """fence records of the batch: (topic, partition, offset, epoch), stored with its offsets"""
    unresolved: dict[TopicPartition, UnresolvableSchema] = field(default_factory=dict)
    """partitions stopped at a record whose writer schema is unresolvable (module docstring)"""

    def event_ids(self) -> list[str]:
        return list(dict.fromkeys(ev.assessment_id for _, ev in self.events))

    def split_held(self, quarantined: set[str]) -> tuple[_Batch, list[tuple[ConsumerRecord[bytes, bytes], Event]]]:
        """(the batch without the events of quarantined assessments, those events). The offsets,
        outcomes and undecodable anomalies stay with the batch: held events are consumed too."""
        if not quarantined:
            return self, []
        kept: list[tuple[ConsumerRecord[bytes, bytes], Event]] = []
        held: list[tuple[ConsumerRecord[bytes, bytes], Event]] = []
        for rec, ev in self.events:
            (held if storable(ev.assessment_id) in quarantined else kept).append((rec, ev))
        if not held:
            return self, []
        return _Batch(kept, self.outcomes, self.anomalies, self.next_offsets, self.fences), held


def storable(text: str) -> str:
    """``text`` as PostgreSQL can store it: NUL (which no text column accepts) as U+FFFD. Used for
    the ids and reasons the quarantine and the anomalies record, never for folded data."""
    return text.replace("\x00", "\ufffd")


def _anomaly(kind: str, rec: ConsumerRecord[bytes, bytes], detail: str, ev: Event | None = None,
             expected: int | None = None, raw: bytes | None = None) -> AnomalyRow:
    return AnomalyRow(
        kind, storable(ev.assessment_id if ev else (rec.key or b"").decode(errors="replace")),
        ev.version if ev else None, expected, ev.event_id if ev else None, rec.topic, rec.partition, rec.offset,
        storable(detail), raw,
    )


class _Rollback(Exception):
    """Raised inside a savepoint to roll a trial fold back (it never leaves ``_fold_isolating``)."""


@dataclass
class _Refused:
    """An assessment whose events PostgreSQL refused: the index of the first refused event among
    its events of the batch, and the error."""

    first: int
    error: DataRejected


class Projector(AsyncLifecycle):
    """Folds the events and outcomes topics into one projection schema.

    Live (the default): a member of the projector consumer group, folding into ``projection``;
    several processes share the partitions. Rebuild (``schema=...``, ``assign_all=True``): no
    group; it owns every partition and folds into its own schema, up to given target offsets.
    """

    def __init__(
        self, settings: Settings, *, group: str | None = None, schema: str = LIVE_SCHEMA, assign_all: bool = False,
        stats: ProjectorStats | None = None, partitions: frozenset[int] | None = None,
    ) -> None:
        """``stats``: counts to continue (a process keeps one across supervised restarts).
        ``partitions`` (rebuild mode): only these partition numbers of each topic, not all of them."""
        self.settings = settings
        self.group = group or settings.projector_group
        self.schema = check_schema_name(schema)
        self.assign_all = assign_all
        self.partitions = partitions
        self.codec = EventCodec()
        self.outcome_codec = OutcomeCodec()
        self._json = json_encoder()
        self.resolver = SchemaResolver(settings, "projector", [self.codec.avro, self.outcome_codec.avro],
                                       retry_s=_SCHEMA_RETRY_S)
        # Partitions stopped at an unresolvable record, until they are sought again.
        self._stopped = PartitionStops("projector", self.resolver, _SCHEMA_RETRY_S)
        self.stats = stats if stats is not None else ProjectorStats()
        self._pool: asyncpg.Pool | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._generation = 0
        self._pending_mirror: dict[TopicPartition, int] = {}
        self._next_mirror = 0.0
        # Partition -> the next offset we expect: set only by our own seek to the stored offset
        # and moved by batches we committed (module docstring, "seek before the first fetch").
        self._positioned: dict[TopicPartition, int] = {}
        # Serialises positioning between the rebalance listener and the fold loop.
        self._position_lock = asyncio.Lock()
        # Assessments in quarantine (storable ids), loaded with the stored offsets.
        self._quarantined: set[str] = set()
        # The fence in force per partition at the next record to decode: loaded with the stored
        # offsets, advanced as records are decoded (a failed batch re-seeks, which reloads it).
        self._fence = LogFence()
        self._backoff = Backoff(log)
        # The states this projector committed last, newest last (``_apply``; module docstring).
        self._states: dict[str, Assessment] = {}

    @property
    def topics(self) -> list[str]:
        return [self.settings.events_topic, self.settings.outcomes_topic]

    async def start(self) -> None:
        if self._consumer is not None:
            return
        await ensure_topics(self.settings, principal="projector")
        await self._open_pool()
        consumer = AIOKafkaConsumer(
            **kafka_client_options(self.settings, "projector"),
            group_id=None if self.assign_all else self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=self.settings.projector_batch_size,
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            session_timeout_ms=self.settings.consumer_session_timeout_ms,
            heartbeat_interval_ms=max(300, self.settings.consumer_session_timeout_ms // 3),
        )
        if not self.assign_all:
            consumer.subscribe(self.topics, listener=_SeekToStoredOffsets(self))
        # Set before start(): the first assignment callback may run as soon as the group is joined.
        self._consumer = consumer
        with translate_kafka_errors(f"starting projector consumer on {self.settings.events_topic}"):
            try:
                await consumer.start()
                if self.assign_all:
                    counts = await partition_counts(self.settings, self.topics, principal="projector")
                    partitions = [TopicPartition(t, p) for t in self.topics for p in range(counts.get(t, 0))
                                  if self.partitions is None or p in self.partitions]
                    if not partitions:
                        raise KafkaUnavailable(f"no partitions found for {self.topics}")
                    consumer.assign(partitions)
                    await self._seek_to_stored(partitions)
            except BaseException:
                self._consumer = None
                await consumer.stop()
                await self._close_pool()
                raise

    async def _open_pool(self) -> None:
        # synchronous_commit stays on (the server default): a batch's COMMIT returns only once its
        # WAL is flushed, and clients are told "visible" only after reading the row it wrote. With
        # it off, a PostgreSQL crash lost acknowledged writes that the projector never re-read.
        pool = await create_pool(self.settings, min_size=1, max_size=2, setup=_create_staging)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
                with translate_db_errors(f"reading the generation of {self.schema}"):
                    self._generation = int(await conn.fetchval(f"SELECT generation FROM {self.schema}.meta"))
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            # terminate, not close: after an outage its connections are dead, and close() would
            # wait on them; nothing is in flight when this runs.
            pool.terminate()

    async def stop(self) -> None:
        if self._consumer is not None and not self.assign_all:
            await self._mirror_offsets(force=True)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        self._positioned.clear()

    async def stored_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        assert self._pool is not None
        with translate_db_errors("reading projector offsets"):
            rows = await self._pool.fetch(
                f"SELECT topic, partition, next_offset FROM {self.schema}.projector_offsets"
                " WHERE consumer_group = $1 AND topic = ANY($2::text[])",
                self.group, list({tp.topic for tp in partitions}),
            )
        stored = {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        return {tp: stored[tp] for tp in partitions if tp in stored}

    async def _load_fences(self, stored: dict[TopicPartition, int], partitions: Sequence[TopicPartition]) -> None:
        """The fence in force at each partition's stored offset (0 where none was folded yet)."""
        assert self._pool is not None
        with translate_db_errors("reading the processors' fences"):
            rows = await self._pool.fetch(
                f"SELECT topic, partition, max(epoch) AS epoch FROM {self.schema}.log_fences"
                " WHERE topic = ANY($1::text[]) GROUP BY topic, partition", list({tp.topic for tp in partitions}))
        epochs = {TopicPartition(r["topic"], r["partition"]): int(r["epoch"]) for r in rows}
        for tp in partitions:
            # Only fences below the stored offset exist here: each is stored with the offsets past it.
            self._fence.epochs[tp] = epochs.get(tp, 0) if tp in stored else 0

    async def _load_quarantined(self) -> None:
        assert self._pool is not None
        with translate_db_errors("reading the quarantined assessments"):
            rows = await self._pool.fetch(f"SELECT assessment_id FROM {self.schema}.quarantine")
        self._quarantined = {r["assessment_id"] for r in rows}

    async def _seek_to_stored(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Position the consumer at the stored offsets (the beginning where none is stored), and
        only then let their records through (``_positioned``, resumed)."""
        consumer = self._consumer
        assert consumer is not None
        async with self._position_lock:
            # A partition (re)assigned may have been folded by another projector meanwhile.
            self._states.clear()
            stored = await self.stored_offsets(partitions)
            # Read after the offsets: a quarantine or fence committed with offsets we read is seen here.
            await self._load_quarantined()
            await self._load_fences(stored, partitions)
            # Only partitions still ours: a rebalance may have moved some during the awaits above.
            owned = consumer.assignment()
            positioned = []
            for tp in partitions:
                if tp not in owned:
                    continue
                if tp in stored:
                    consumer.seek(tp, stored[tp])
                    self._positioned[tp] = stored[tp]
                else:
                    await consumer.seek_to_beginning(tp)
                    self._positioned[tp] = 0
                positioned.append(tp)
            if positioned and not self.assign_all:
                consumer.resume(*positioned)
        return stored

    def _forget_positions(self) -> None:
        """After a database error: nothing we believed about positions holds any more (the batch
        in flight may or may not have committed), so every owned partition waits, paused, for a
        seek to the offsets PostgreSQL stores."""
        self._positioned.clear()
        self._states.clear()
        if self._consumer is not None and not self.assign_all:
            owned = self._consumer.assignment()
            if owned:
                self._consumer.pause(*owned)

    async def _ensure_positioned(self) -> None:
        """Reconnect if the pool was dropped, and seek every owned partition not positioned yet
        (one whose listener seek failed, or all of them after a database error)."""
        if self._pool is None:
            await self._open_pool()
        consumer = self._consumer
        assert consumer is not None
        self._stopped.due()
        missing = [tp for tp in consumer.assignment() if tp not in self._positioned and not self._stopped.waiting(tp)]
        if missing:
            consumer.pause(*missing)
            stored = await self._seek_to_stored(sorted(missing))
            log.info("positioned %s at stored offsets %s", sorted(missing), stored)

    def _accept(
        self, records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """Only records at or after the offset our own seek set: anything else was fetched from a
        position we did not choose (Kafka's committed offsets before our seek) and is dropped."""
        accepted: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for tp, recs in records.items():
            expected = self._positioned.get(tp)
            kept = [] if expected is None else [r for r in recs if r.offset >= expected]
            if len(kept) < len(recs):
                self.stats.unpositioned_dropped += len(recs) - len(kept)
                log.info("dropped %d record(s) of %s fetched before our seek (expected offset %s, got %d..)",
                         len(recs) - len(kept), tp, expected, recs[0].offset)
            if kept:
                accepted[tp] = kept
        return accepted

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Fold until ``stop`` is set (or forever). A PostgreSQL outage of any length is ridden
        out here (backoff, then re-seek to the stored offsets); a Kafka error leaves the loop for
        the supervisor (``assessment_store.core.supervise``), which restarts the consumer."""
        await self.start()
        assert self._consumer is not None
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self._ensure_positioned()
                with translate_kafka_errors("fetching events"):
                    records = await self._consumer.getmany(timeout_ms=200, max_records=self.settings.projector_batch_size)
                records = self._accept(records)
                if records:
                    await self.fold(records)
                self._backoff.succeeded("PostgreSQL recovered: folding again from the stored offsets")
            except DatabaseUnavailable as e:
                if _swapped(e):
                    await self._after_swap()
                    continue
                # Ordering: forget positions *before* waiting, so nothing fetched meanwhile is folded
                # from a position PostgreSQL may not have (the failed batch may or may not have committed).
                self._forget_positions()
                await self._close_pool()
                await self._backoff.failed("PostgreSQL unavailable", e, stop)

    async def fold_until(
        self, targets: dict[TopicPartition, int], on_batch: Callable[[int], None] | None = None
    ) -> None:
        """(Rebuild mode) fold until every partition's position reaches its target offset, and
        not one record beyond it: the rebuild must equal the live projection at those offsets."""
        consumer = self._consumer
        assert consumer is not None and self.assign_all
        pipeline = _Pipeline(self)
        # A rebuild allocates millions of short-lived objects: core/_gc.py says what the defaults cost.
        with bulk_collection():
            try:
                await self._fold_until(consumer, targets, on_batch, pipeline)
            finally:
                await pipeline.drain()

    async def _fold_until(
        self, consumer: AIOKafkaConsumer, targets: dict[TopicPartition, int],
        on_batch: Callable[[int], None] | None, pipeline: _Pipeline,
    ) -> None:
        while True:
            positions = {tp: await consumer.position(tp) for tp in targets}
            behind = [tp for tp, end in targets.items() if positions[tp] < end]
            done = [tp for tp in targets if tp not in behind]
            if done:
                consumer.pause(*done)
            if not behind:
                return
            consumer.resume(*behind)
            with translate_kafka_errors("fetching events to rebuild"):
                records = await consumer.getmany(*behind, timeout_ms=500, max_records=self.settings.projector_batch_size)
            trimmed = {tp: [r for r in recs if r.offset < targets[tp]] for tp, recs in records.items()}
            trimmed = {tp: recs for tp, recs in trimmed.items() if recs}
            for tp, recs in records.items():
                if recs and recs[-1].offset + 1 > targets[tp]:
                    consumer.seek(tp, targets[tp])  # fetched past the target: forget the excess
            if trimmed:
                await pipeline.fold(trimmed)
                if on_batch is not None:
                    on_batch(sum(len(r) for r in trimmed.values()))

    def _decode(self, records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> tuple[_Batch, FoldStats]:
        return _run(self._decode_steps(records, 0))

    def _decode_steps(
        self, records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]], every: int
    ) -> Generator[None, None, tuple[_Batch, FoldStats]]:
        """Decode ``records``; a step after every ``every`` records (none when 0): see ``_run``."""
        batch = _Batch()
        stats = FoldStats(batches=1)
        n = 0
        for tp, recs in records.items():
            for rec in recs:
                n += 1
                if n == every:
                    n = 0
                    yield
                # Fences first (streams/_fence.py): a fence record is stored, not folded; a record
                # written after a later owner's fence is kept as an anomaly, never folded.
                verdict, epoch = self._fence.judge(tp, rec.headers)
                if verdict is Verdict.FENCE:
                    batch.fences.append((rec.topic, rec.partition, rec.offset, epoch or 0))
                    continue
                if verdict is Verdict.FENCED:
                    stats.fenced += 1
                    batch.anomalies.append(self._fenced_anomaly(rec, epoch, self._fence.current(tp)))
                    continue
                try:
                    if rec.topic == self.settings.outcomes_topic:
                        batch.outcomes.append((rec, self.outcome_codec.decode(rec.value, rec.headers)))
                    else:
                        batch.events.append((rec, self.codec.decode(rec.value, rec.headers)))
                except UnresolvableSchema as e:
                    # Ordering: the partition's progress ends before this record (module docstring);
                    # the records after it in this batch are fetched again after the re-seek.
                    batch.unresolved[tp] = e.at(rec.topic, rec.partition, rec.offset)
                    stats.unresolvable += 1
                    if rec.offset > recs[0].offset:
                        batch.next_offsets[tp] = rec.offset
                    break
                except CodecError as e:
                    stats.undecodable += 1
                    batch.anomalies.append(_anomaly("undecodable", rec, str(e), raw=rec.value))
            if recs and tp not in batch.unresolved:
                batch.next_offsets[tp] = recs[-1].offset + 1
        return batch, stats

    def _fenced_anomaly(self, rec: ConsumerRecord[bytes, bytes], epoch: int | None, fence: int) -> AnomalyRow:
        detail = f"written at epoch {epoch} after the fence of epoch {fence}: a processor that had lost the partition"
        try:
            if rec.topic == self.settings.outcomes_topic:
                o = self.outcome_codec.decode(rec.value, rec.headers)
                return _anomaly("fenced", rec, f"outcome of command {o.command_id}: {detail}", raw=rec.value)
            return _anomaly("fenced", rec, detail, self.codec.decode(rec.value, rec.headers), raw=rec.value)
        except CodecError:
            return _anomaly("fenced", rec, detail, raw=rec.value)  # a stale fence record, or undecodable

    async def learn_schemas(self, records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Look up the writer schemas of ``records`` the codecs do not know (``SchemaResolver.learn``)."""
        await self.resolver.learn(records)

    def _stop_unresolved(self, batch: _Batch) -> None:
        """After the batch committed: each partition stopped at an unresolvable record waits,
        paused and unpositioned, to be sought again to the stored offset (that record's)."""
        for tp, e in batch.unresolved.items():
            self._stopped.stop(tp, e)
            self._positioned.pop(tp, None)
            if self._consumer is not None and tp in self._consumer.assignment():
                self._consumer.pause(tp)

    async def fold(self, records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> FoldStats:
        started = time.perf_counter()
        await self.learn_schemas(records)
        batch, stats = self._decode(records)
        assert self._pool is not None
        for attempt in range(1, _FOLD_ATTEMPTS + 1):
            tried = FoldStats(batches=1, undecodable=stats.undecodable, unresolvable=stats.unresolvable)
            try:
                with translate_db_errors("folding a batch"):
                    async with self._pool.acquire() as conn:
                        await self._apply(conn, batch, tried)
                break
            except DataRejected as e:
                tried = FoldStats(batches=1, undecodable=stats.undecodable, unresolvable=stats.unresolvable)
                await self._fold_isolating(batch, tried, e)
                break
            except DatabaseUnavailable as e:
                # Only a lost race with another projector (serialization failure, deadlock) is
                # retried here, on the same connection pool: the transaction surely rolled back.
                # Anything else (PostgreSQL gone, a swap) goes to run(), which re-seeks.
                if not _raced(e) or attempt == _FOLD_ATTEMPTS:
                    raise
                log.info("batch raced another projector (attempt %d): re-reading and re-folding", attempt)
        self.stats.add(tried)
        self.stats.batch_records.observe(sum(len(recs) for recs in records.values()))
        self.stats.batch_seconds.observe(time.perf_counter() - started)
        for tp, nxt in batch.next_offsets.items():
            if tp in self._positioned:  # unless re-sought meanwhile: then the seek's offset stands
                self._positioned[tp] = max(self._positioned[tp], nxt)
        self._stop_unresolved(batch)
        self._pending_mirror.update(batch.next_offsets)
        await self._mirror_offsets()
        return tried

    async def _fold_isolating(self, batch: _Batch, stats: FoldStats, cause: DataRejected) -> None:
        """Fold ``batch`` although PostgreSQL refused it: find the assessments whose events carry
        the refused values, quarantine them from their first refused event on, and commit every
        other row, the held events and the offsets in one transaction (module docstring)."""
        assert self._pool is not None
        log.warning("PostgreSQL refused a batch (%s); isolating the assessment(s) responsible", cause)
        rest, held_known = batch.split_held(self._quarantined)
        ids = rest.event_ids()
        events_of: dict[str, list[tuple[ConsumerRecord[bytes, bytes], Event]]] = {}
        for rec, ev in rest.events:
            events_of.setdefault(ev.assessment_id, []).append((rec, ev))
        # The units that are refused or not: an assessment (all its events of the batch), or one
        # outcome record (an outcome never depends on state, so it never quarantines anyone).
        units: list[tuple[str, int]] = [("a", i) for i in range(len(ids))] + [("o", i) for i in range(len(batch.outcomes))]
        with translate_db_errors("folding a batch assessment by assessment"):
            async with self._pool.acquire() as conn, conn.transaction():
                # An id PostgreSQL cannot store (a NUL) has no row to read, and would fail the read.
                readable = [i for i in ids if storable(i) == i]
                states = await fetch_assessments(conn, readable, schema=self.schema) if readable else {}
                refused: dict[str, _Refused] = {}
                bad_outcomes: list[tuple[ConsumerRecord[bytes, bytes], DataRejected]] = []

                async def trial(events: list[tuple[ConsumerRecord[bytes, bytes], Event]],
                                outcomes: list[tuple[ConsumerRecord[bytes, bytes], Outcome]],
                                keep: bool, into: FoldStats) -> DataRejected | None:
                    """Fold these records in a savepoint; keep them only if ``keep`` and accepted."""
                    tried = FoldStats()
                    sub = _Batch(events, outcomes)
                    prepared, _ = self._prepare(sub, {i: states[i] for i in sub.event_ids() if i in states}, tried)
                    try:
                        async with conn.transaction():
                            with translate_db_errors("folding part of a refused batch"):
                                tried.reused_ids += await conn.fetchval(_FOLD_BATCH, *self._batch_args(prepared))
                            if not keep:
                                raise _Rollback
                    except DataRejected as e:
                        return e
                    except _Rollback:
                        return None
                    into.add(tried)
                    return None

                async def bisect(group: list[tuple[str, int]], error: DataRejected) -> None:
                    """``group`` was refused with ``error``: split until each refused unit stands
                    alone; fold and keep everything else."""
                    if len(group) == 1:
                        kind, i = group[0]
                        if kind == "a":
                            refused[ids[i]] = await self._first_refused(events_of[ids[i]], trial, error)
                        else:
                            bad_outcomes.append((batch.outcomes[i][0], error))
                        return
                    half = (len(group) + 1) // 2
                    for part in (group[:half], group[half:]):
                        events = [x for kind, i in part if kind == "a" for x in events_of[ids[i]]]
                        outcomes = [batch.outcomes[i] for kind, i in part if kind == "o"]
                        e = await trial(events, outcomes, True, stats)
                        if e is not None:
                            await bisect(part, e)

                await bisect(units, cause)
                # What the refused assessments keep: the events before their first refused one.
                held: list[tuple[str, ConsumerRecord[bytes, bytes]]] = [(storable(ev.assessment_id), rec)
                                                                        for rec, ev in held_known]
                for aid, r in refused.items():
                    evs = events_of[aid]
                    if r.first > 0:
                        e = await trial(evs[:r.first], [], True, stats)
                        if e is not None:  # it folded a moment ago in the same transaction
                            raise e
                    held.extend((storable(aid), rec) for rec, _ in evs[r.first:])
                # Last: the offsets and undecodable records of the whole batch, refused outcomes as
                # anomalies, the quarantine rows and every held record, committed with the rows above.
                rest = _Batch(anomalies=list(batch.anomalies) + [
                    _anomaly("unstorable_outcome", rec, f"PostgreSQL refused this outcome: {e.reason}", raw=rec.value)
                    for rec, e in bad_outcomes], next_offsets=batch.next_offsets)
                prepared, _ = self._prepare(rest, {}, FoldStats())
                await conn.execute(_FOLD_BATCH, *self._batch_args(prepared))
                await self._insert_fences(conn, batch.fences)
                for aid, r in refused.items():
                    rec = events_of[aid][r.first][0]
                    await conn.execute(
                        f"INSERT INTO {self.schema}.quarantine (assessment_id, reason, sqlstate, kafka_topic,"
                        " kafka_partition, kafka_offset, raw_value) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                        " ON CONFLICT (assessment_id) DO NOTHING",
                        storable(aid), storable(r.error.reason), r.error.sqlstate, rec.topic, rec.partition,
                        rec.offset, rec.value,
                    )
                await self._insert_held(conn, held)
        stats.quarantined += len(refused)
        stats.held += len(held)
        stats.unstorable_outcomes += len(bad_outcomes)
        for aid, r in refused.items():
            rec = events_of[aid][r.first][0]
            # The alert: one ERROR line per quarantined assessment (and the quarantined count in stats).
            log.error("QUARANTINED assessment %r: PostgreSQL refused its event at %s/%d/%d (%s: %s); its later "
                      "events are held, every other assessment keeps folding; see `assessment-store quarantine list`",
                      storable(aid), rec.topic, rec.partition, rec.offset, r.error.sqlstate, r.error.reason)
            self._quarantined.add(storable(aid))
        for rec, e in bad_outcomes:
            log.error("outcome record at %s/%d/%d refused by PostgreSQL (%s); kept as an anomaly",
                      rec.topic, rec.partition, rec.offset, e.reason)

    async def _first_refused(
        self, events: list[tuple[ConsumerRecord[bytes, bytes], Event]],
        trial: Callable[..., Awaitable[DataRejected | None]], error: DataRejected,
    ) -> _Refused:
        """The index of the first event of ``aid`` PostgreSQL refuses: the shortest refused prefix
        (bisected with trial folds that are rolled back), so the events before it can be applied
        and the result does not depend on where batches happen to start."""
        good, bad = 0, len(events)  # prefix lengths known to fold / to be refused
        while bad - good > 1:
            mid = (good + bad) // 2
            e = await trial(events[:mid], [], False, FoldStats())
            if e is None:
                good = mid
            else:
                bad, error = mid, e
        return _Refused(bad - 1, error)

    async def _insert_fences(self, conn: asyncpg.Connection, fences: list[tuple[str, int, int, int]]) -> None:
        """Store the batch's fence records with its offsets (same transaction). ON CONFLICT: a batch
        re-read after a crash or by two projectors in a rebalance stores each fence once."""
        if fences:
            await conn.executemany(
                f"INSERT INTO {self.schema}.log_fences (topic, partition, kafka_offset, epoch) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT DO NOTHING", fences)

    async def _insert_held(self, conn: asyncpg.Connection, held: list[tuple[str, ConsumerRecord[bytes, bytes]]]) -> None:
        """Keep records of quarantined assessments as they were on the topic, not applied.
        ON CONFLICT: a batch re-read after a crash or by two projectors in a rebalance holds once."""
        if not held:
            return
        await conn.executemany(
            f"INSERT INTO {self.schema}.quarantine_held (assessment_id, kafka_topic, kafka_partition, kafka_offset,"
            " raw_key, raw_value, header_keys, header_values, timestamp_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT DO NOTHING",
            [(aid, r.topic, r.partition, r.offset, r.key, r.value, [storable(k) for k, _ in r.headers],
              [bytes(v) for _, v in r.headers], r.timestamp) for aid, r in held],
        )

    async def _after_swap(self) -> None:
        """The projection's generation changed (a rebuild was swapped in, or a quarantined
        assessment re-folded): reconnect (fresh sessions, fresh plans), read the new generation
        and quarantine list, and move every owned partition to the offsets stored there. Records
        fetched past them are folded again: the version check makes that a no-op."""
        log.warning("the projection's generation changed (a rebuild swapped in, or a re-fold): reconnecting "
                    "and resuming from its offsets")
        self._forget_positions()
        await self._close_pool()
        self._pending_mirror.clear()
        await self._ensure_positioned()

    async def _mirror_offsets(self, force: bool = False) -> None:
        """Copy the folded offsets to Kafka's group offsets, at most once a second: only lag tools
        read them (see the module docstring), so they need not cost a round trip per batch."""
        loop = asyncio.get_running_loop()
        if self.assign_all or self._consumer is None or not self._pending_mirror:
            return  # a rebuild has no group: nothing for lag tools to read
        if not force and loop.time() < self._next_mirror:
            return
        offsets, self._pending_mirror = self._pending_mirror, {}
        self._next_mirror = loop.time() + 1.0
        try:
            await self._consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
        except Exception as e:  # noqa: BLE001 - advisory only, see module docstring
            log.warning("could not mirror offsets to Kafka (the projection is unaffected): %s", e)

    def _fold_steps(self, batch: _Batch, states: dict[str, Assessment], stats: FoldStats, every: int) -> Generator[
        None, None, tuple[dict[str, tuple[int, Assessment]], list[HistoryRow], list[AnomalyRow], list[OutcomeRow]]
    ]:
        """Fold ``batch`` onto ``states`` in memory: (changed id -> (folded-from version, state)),
        history rows, anomaly rows, and the accepted-outcome rows the events stand for (the
        processor writes outcome records only for rejections). Pure: same inputs, same rows."""
        changed: dict[str, tuple[int, Assessment]] = {}
        history: list[HistoryRow] = []
        accepted: list[OutcomeRow] = []
        anomalies = list(batch.anomalies)
        n = 0
        for rec, ev in batch.events:
            n += 1
            if n == every:
                n = 0
                yield
            cur = states.get(ev.assessment_id)
            expected = (cur.version if cur else 0) + 1
            if ev.version < expected:
                stats.duplicates += 1
                anomalies.append(_anomaly("duplicate", rec, f"version {ev.version} already applied", ev, expected))
                continue
            if ev.version > expected:
                stats.gaps += 1
                anomalies.append(_anomaly("version_gap", rec, f"expected version {expected}", ev, expected))
                continue
            try:
                new = evolve(cur, ev)
            except AssessmentStoreError as e:
                stats.unfoldable += 1
                anomalies.append(_anomaly("unfoldable", rec, str(e), ev, expected))
                continue
            prev = changed[ev.assessment_id][0] if ev.assessment_id in changed else expected - 1
            states[ev.assessment_id] = new
            changed[ev.assessment_id] = (prev, new)
            stats.applied += 1
            # Built from a tuple (NamedTuple._make, which checks the length): half the cost of the
            # generated __new__ with its thirteen arguments, twice per folded event.
            history.append(_history_row((
                ev.assessment_id, ev.version, ev.event_id, _TYPE_NAMES[type(ev.payload)], ev.occurred_at,
                ev.recorded_at, _ENUM_VALUES[ev.source], ev.correlation_id, ev.causation_id,
                self._json(_payload_fields(ev.payload)), rec.topic, rec.partition, rec.offset,
            )))
            if ev.causation_id is not None:
                raw = header(rec.headers, COMMAND_OFFSET_HEADER)
                accepted.append(_outcome_row((
                    ev.causation_id, ev.assessment_id, True, ev.version, ev.event_id, None, None, None,
                    ev.recorded_at, rec.partition, rec.offset, int(raw) if raw is not None else -1,
                )))
        return changed, history, anomalies, accepted

    async def _apply(self, conn: asyncpg.Connection, batch: _Batch, stats: FoldStats) -> None:
        rest, held = batch.split_held(self._quarantined)
        cached, ids = self._states, rest.event_ids()
        states = {aid: cached[aid] for aid in ids if aid in cached}
        missing = [aid for aid in ids if aid not in states]
        stats.states_cached += len(states)
        stats.states_read += len(missing)
        if missing:
            states.update(await fetch_assessments(conn, missing, schema=self.schema))
        try:
            prepared, changed = self._prepare(rest, states, stats)
            if not held and not batch.fences and len(rest.events) + len(rest.outcomes) <= _SMALL_BATCH:
                # One statement, its own transaction: rows, offsets and notifications commit together.
                stats.reused_ids += await conn.fetchval(_FOLD_BATCH, *self._batch_args(prepared))
            else:
                held_rows = [(storable(ev.assessment_id), rec) for rec, ev in held]
                stats.reused_ids += await self._store(conn, prepared, held_rows, batch.fences, "folding a batch")
                stats.held += len(held)
        except BaseException:
            # Committed or not, raced or refused: what PostgreSQL holds is read again.
            cached.clear()
            raise
        self._keep_states(changed)

    def _keep_states(self, changed: dict[str, Assessment]) -> None:
        """Remember the states a batch just committed, newest last, up to ``projector_state_cache``."""
        cap = self.settings.projector_state_cache
        cached = self._states
        for aid, state in changed.items():
            cached.pop(aid, None)  # re-inserted: moves to the end, the newest
            cached[aid] = state
        excess = len(cached) - cap
        if excess > 0:
            for aid in list(itertools.islice(cached, excess)):
                del cached[aid]

    async def _store(self, conn: asyncpg.Connection, prepared: _Prepared,
                     held: list[tuple[str, ConsumerRecord[bytes, bytes]]], fences: list[tuple[str, int, int, int]],
                     what: str) -> int:
        """Store a folded batch in one transaction: its rows and offsets, held records and fences
        commit together, or not at all. Returns the events stored without a history row (a reused
        event id: each one a ``reused_event_id`` anomaly).

        The history rows are COPYed straight into ``assessment_events``, and the accepted commands'
        outcomes straight into ``command_outcomes`` (``_write_staged``). If one of them is already
        stored there (a unique violation: fold_staged's version guard passed, so only an event id
        reused by another event, or a command id already holding an outcome, can cause it), the
        transaction has rolled back and the batch is stored again the older way, through the staging
        tables: there fold_staged records a reused event id as a ``reused_event_id`` anomaly, and
        keeps the outcome stored first (``ON CONFLICT DO NOTHING``), as it always did."""
        direct = True
        while True:
            try:
                with translate_db_errors(what):
                    async with conn.transaction():
                        reused = await self._write_staged(conn, prepared, history_direct=direct)
                        await self._insert_held(conn, held)
                        await self._insert_fences(conn, fences)
                return reused
            except DatabaseUnavailable as e:
                if not (direct and _duplicate(e)):
                    raise
                log.warning("%s: a history or outcome row is already stored (%s); storing the batch through staging",
                            what, e.__cause__)
                direct = False

    async def _write_staged(self, conn: asyncpg.Connection, prepared: _Prepared, *, history_direct: bool) -> int:
        """COPY the batch's rows into the staging tables and store them with ``fold_staged``; the
        caller owns the transaction (the staging tables are emptied at its commit or rollback).
        Returns fold_staged's count of reused event ids (always 0 with ``history_direct``: the COPY
        fails on one instead).

        With ``history_direct``, the history rows skip staging: COPYed into ``assessment_events``
        itself, after fold_staged (whose insert from the then empty staging table stores nothing).
        It saves PostgreSQL a third of its work per folded event (a 1,000,000-event rebuild:
        22.1 -> 14-17 µs per event). So do the accepted commands' outcomes, COPYed into
        ``command_outcomes`` after the history rows, and after the outcomes topic's rows, which
        fold_staged stores from staging (as in the staged order: topic rows first). After, not before, for two orderings: fold_staged first takes
        the projection's shared swap lock and checks its generation, so the COPY never writes into
        a schema being swapped (nor waits on a table lock while a swap waits on that lock); and its
        version guard fails a batch that raced another projector (serialization failure, retried)
        before the COPY could meet that projector's rows as unique violations."""
        for rows, row_type in ((prepared.assessments, AssessmentRow),
                               ([] if history_direct else prepared.history, HistoryRow),
                               (prepared.outcomes if history_direct else prepared.outcomes + prepared.accepted,
                                OutcomeRow)):
            if rows:
                await _copy(conn, STAGING_TABLES[row_type], rows)
        reused: int = await conn.fetchval(
            _FOLD_STAGED, self.schema, not self.assign_all, self._generation, self.group,
            *columns(prepared.anomalies, AnomalyRow), *columns(prepared.offsets, OffsetRow),
            prepared.notify_changes, prepared.notify_outcomes, *prepared.replies,
        )
        if history_direct and prepared.history:
            await _copy(conn, "assessment_events", prepared.history, schema=self.schema, columns=HISTORY_COLUMNS)
        if history_direct and prepared.accepted:
            # After the outcomes topic's rows (stored by fold_staged): staged, those came first too.
            await _copy(conn, "command_outcomes", prepared.accepted, schema=self.schema, columns=OUTCOME_COLUMNS)
        return reused

    def _batch_args(self, prepared: _Prepared) -> list[Any]:
        """``fold_batch``'s arguments (every row as parallel arrays), for the refused-batch path."""
        return [
            self.schema, not self.assign_all, self._generation, self.group,
            *columns(prepared.assessments, AssessmentRow), *columns(prepared.history, HistoryRow),
            *columns(prepared.outcomes + prepared.accepted, OutcomeRow), *columns(prepared.anomalies, AnomalyRow),
            *columns(prepared.offsets, OffsetRow), prepared.notify_changes, prepared.notify_outcomes,
            *prepared.replies,
        ]

    def _prepare(
        self, batch: _Batch, states: dict[str, Assessment], stats: FoldStats
    ) -> tuple[_Prepared, dict[str, Assessment]]:
        """Fold in memory and build the rows to store; also returns the new states."""
        return _run(self._prepare_steps(batch, states, stats, 0))

    def _prepare_steps(
        self, batch: _Batch, states: dict[str, Assessment], stats: FoldStats, every: int
    ) -> Generator[None, None, tuple[_Prepared, dict[str, Assessment]]]:
        """``_prepare`` with a step after every ``every`` events folded (none when 0)."""
        changed, history, anomalies, accepted = yield from self._fold_steps(batch, states, stats, every)
        rows = [_assessment_row(prev, a, self._json) for prev, a in changed.values()]
        outcome_rows = [
            OutcomeRow(o.command_id, o.assessment_id, o.accepted, o.version, o.event_id, o.error_type, o.error_message,
             self._json(o.error_details) if o.error_details is not None else None, o.processed_at, rec.partition,
             rec.offset, o.command_offset)
            for rec, o in batch.outcomes
        ]
        offsets = [OffsetRow(tp.topic, tp.partition, o) for tp, o in batch.next_offsets.items()]
        notify_changes: list[str] = []
        notify_outcomes: list[str] = []
        replies: tuple[list[str], list[str], list[str]] = ([], [], [])
        if not self.assign_all:  # a rebuild wakes no one (fold_batch ignores them then)
            notify_changes = [f"{a.assessment_id}|{a.version}|{a.state.value}" for _, a in changed.values()]
            # Duplicates too: the client that re-sent a command waits for this wake-up.
            notify_outcomes = list({f"{r.cmd}|{r.id}|{int(r.accepted)}|{r.version or ''}"
                                    for r in itertools.chain(outcome_rows, accepted)})
            replies = _replies(batch)
        prepared = _Prepared(rows, history, outcome_rows, accepted, anomalies, offsets, notify_changes, notify_outcomes,
                             replies)
        return prepared, {aid: a for aid, (_prev, a) in changed.items()}


@dataclass
class _Prepared:
    """A folded batch's rows, ready to store (``Projector._write_staged`` or ``_batch_args``)."""

    assessments: list[AssessmentRow]
    history: list[HistoryRow]
    outcomes: list[OutcomeRow]
    """from the outcomes topic: rejections and answers to re-sent commands"""
    accepted: list[OutcomeRow]
    """read off the applied events: the outcome each accepted command's event stands for"""
    anomalies: list[AnomalyRow]
    offsets: list[OffsetRow]
    notify_changes: list[str]
    notify_outcomes: list[str]
    replies: tuple[list[str], list[str], list[str]]
    """(channel, assessment id, ``<version>|<command id>``) per accepted command whose client waits
    on a reply channel: the SQL sends that channel the stored row
    (``sql/013_replies_and_reused_ids.sql``)"""


def _replies(batch: _Batch) -> tuple[list[str], list[str], list[str]]:
    """The batch's events whose command named a reply channel (``REPLY_HEADER``, copied by the
    processor): channels, assessment ids, tails. A header that is not a reply channel's name is
    ignored; an event not applied (a duplicate, a gap, held) still gets its reply, which carries
    the stored row at a lower version than the tail's, and the client then reads instead."""
    channels: list[str] = []
    ids: list[str] = []
    tails: list[str] = []
    for rec, ev in batch.events:
        raw = header(rec.headers, REPLY_HEADER)
        if raw is None or ev.causation_id is None:
            continue
        channel = raw.decode("utf-8", "replace")
        if is_reply_channel(channel):
            channels.append(channel)
            ids.append(ev.assessment_id)
            tails.append(f"{ev.version}|{ev.causation_id}")
    return channels, ids, tails


def _assessment_row(prev: int, a: Assessment, _json: Callable[[Any], str]) -> AssessmentRow:
    # request_data / result_data travel as JSON text (cast to jsonb in SQL; None as JSON null).
    return AssessmentRow(
        prev, a.assessment_id, _ENUM_VALUES[a.state], a.version, a.progress, a.message, _json(a.request_data),
        _json(a.result_data), a.error_message, a.retryable, a.retry_count, a.max_retries, a.cancel_reason,
        a.duration, a.processing_timeout_ms, a.created_at, a.updated_at, a.started_at, a.finished_at,
        a.last_event_id,  # type: ignore[arg-type]  # always set on a folded state
    )


async def _create_staging(conn: asyncpg.Connection) -> None:
    """Each pooled connection's session: its staging tables (created once per connection), jsonb
    in binary format with parameters taken as JSON text (``_jsonb_text``), and timestamptz through
    ``_timestamptz_micros``."""
    await conn.execute(staging_ddl())
    await conn.set_type_codec("jsonb", encoder=_jsonb_text, decoder=_jsonb_value, schema="pg_catalog",
                              format="binary")
    await conn.set_type_codec("timestamptz", encoder=_timestamptz_micros, decoder=_timestamptz_value,
                              schema="pg_catalog", format="tuple")


_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_PG_INFINITY = 2**63 - 1
_PG_NEGATIVE_INFINITY = -(2**63)
_last_stamp: tuple[object, tuple[int]] = (object(), (0,))


def _timestamptz_micros(value: datetime) -> tuple[int]:
    """A timestamptz as PostgreSQL stores it, microseconds since 2000-01-01 UTC, for the driver to
    write as is. Three per folded event (two history times, one outcome time): the driver's own
    encoder compares each with its infinity, converts it to UTC and subtracts (0.8-1.0 µs of the
    projector's CPU each, COPYing history rows); one subtraction of two UTC datetimes, floor-divided
    by a microsecond, is exact and takes under half of that. What is not an aware datetime is read
    as the driver's own codec reads it: a naive one as local time, ``datetime.max``/``min`` as
    infinity.

    The last value and its result are kept: an event's two times are one object when they are
    the same instant (the processor decides at once, and the reader shares them), and the accepted
    command's outcome carries the event's recorded time, so most values repeat the one before. The
    kept reference also keeps that object alive, so ``is`` never meets a new object at its address."""
    global _last_stamp
    last = _last_stamp
    if value is last[0]:
        return last[1]
    micros = _micros_of(value)
    _last_stamp = (value, micros)  # one tuple, replaced whole
    return micros


def _micros_of(value: datetime) -> tuple[int]:
    try:
        return ((value - _PG_EPOCH) // _MICROSECOND,)
    except TypeError:
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime for a timestamptz, got {type(value).__name__}") from None
        if value == datetime.max:
            return (_PG_INFINITY,)
        if value == datetime.min:
            return (_PG_NEGATIVE_INFINITY,)
        return ((value.astimezone(UTC) - _PG_EPOCH) // _MICROSECOND,)


def _timestamptz_value(value: tuple[int]) -> datetime:
    """What the driver's own codec reads: an aware UTC datetime, naive ``max``/``min`` for infinity."""
    (micros,) = value
    if micros == _PG_INFINITY:
        return datetime.max
    if micros == _PG_NEGATIVE_INFINITY:
        return datetime.min
    return _PG_EPOCH + timedelta(microseconds=micros)


def _jsonb_text(value: Any) -> bytes:
    """A jsonb value as the projector has it, JSON text (``json_encoder``): the history rows COPYed
    straight into ``assessment_events`` carry their payload so, and a binary COPY needs a binary
    codec (the pools' default takes Python values and encodes them as text)."""
    if not isinstance(value, str):
        raise TypeError(f"the projector's jsonb values are JSON text, not {type(value).__name__}")
    return b"\x01" + value.encode()  # jsonb's binary format: version 1, then the text


def _jsonb_value(data: bytes) -> Any:
    return json.loads(data[1:])  # as the default codec reads the text: the same values


async def _copy(conn: asyncpg.Connection, table: str, rows: Sequence[tuple[Any, ...]], *, schema: str | None = None,
                columns: Sequence[str] | None = None) -> None:
    """Binary COPY of ``rows`` into ``table`` (a staging table, or ``schema``'s history table)."""
    try:
        await conn.copy_records_to_table(table, schema_name=schema, columns=columns, records=rows)
    except (ValueError, OverflowError, TypeError) as e:
        # Client side: a value the driver cannot encode for its column (as DataError says for a
        # statement's arguments). The transaction rolls back; re-folded through fold_batch, the
        # refused assessment is quarantined.
        raise DataRejected(f"copying {table}", None, f"{type(e).__name__}: {e}") from e


_history_row = HistoryRow._make
_outcome_row = OutcomeRow._make

# Enum values by member and event type names by payload class: an enum's ``.value`` is a
# descriptor call, a few per folded event.
_TYPE_NAMES: dict[type[Payload], str] = {cls: t.value for cls, t in PAYLOAD_TYPES.items()}
_ENUM_VALUES: dict[enum.Enum, str] = {m: m.value for e in (EventSource, State) for m in e}


def _payload_fields(p: Payload) -> dict[str, Any]:
    # The payload classes are flat slotted dataclasses: no deep copy needed (dataclasses.asdict
    # deep-copies every value and was the single largest cost of a rebuild).
    return {name: getattr(p, name) for name in p.__slots__}


def _json_std(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _nonfinite(value: Any) -> bool:
    """Whether a NaN or an infinity is in ``value`` (a JSON document). Plain loops: it runs for
    most events (any null in the text), and generators cost as much as the encoding."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, list | tuple):
        items = value
    else:
        return False
    for v in items:
        if isinstance(v, float | dict | list | tuple) and _nonfinite(v):
            return True
    return False


def json_encoder() -> Callable[[Any], str]:
    """The JSON encoder of the projector's jsonb columns: orjson's when it is installed (the server
    extra), ``_json_std`` otherwise. Imported here, not at module level: the client's base install,
    which imports this package for its queries, has no orjson."""
    try:
        import orjson
    except ImportError:
        return _json_std
    # datetimes and dataclasses go to default=str, as with json.dumps (orjson would write its own form).
    options = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
    dumps, refused = orjson.dumps, (orjson.JSONEncodeError, TypeError)

    def encode(value: Any) -> str:
        """``value`` as JSON text, exactly as ``_json_std`` writes it up to formatting (the jsonb
        column stores the same value): orjson takes a fifth of the time. Where the two would store
        different values, the standard encoder writes it: an integer beyond 64 bits or a lone
        surrogate (orjson refuses them), and NaN or an infinity (orjson writes null; json writes NaN,
        which PostgreSQL refuses, so the assessment is quarantined as it always was)."""
        try:
            out = dumps(value, default=str, option=options)
        except refused:
            return _json_std(value)
        if b"null" in out and _nonfinite(value):
            return _json_std(value)
        return out.decode()

    return encode


# Four scalars (schema, notify, generation, group), one array per field of each row type, two
# notification arrays, three reply arrays: 67 parameters, in the order of fold_batch's signature.
_FOLD_BATCH_ARITY = 4 + sum(len(t._fields) for t in (AssessmentRow, HistoryRow, OutcomeRow, AnomalyRow, OffsetRow)) + 5
_FOLD_BATCH = "SELECT public.fold_batch(" + ", ".join(f"${i}" for i in range(1, _FOLD_BATCH_ARITY + 1)) + ")"
# fold_staged: the four scalars, the anomaly and offset arrays, the notification and reply arrays.
_FOLD_STAGED_ARITY = 4 + len(AnomalyRow._fields) + len(OffsetRow._fields) + 5
_FOLD_STAGED = "SELECT public.fold_staged(" + ", ".join(f"${i}" for i in range(1, _FOLD_STAGED_ARITY + 1)) + ")"

# SQLSTATEs that mean "the projection schema changed under this session": our own AS001 from
# fold_batch (generation mismatch), and a table/function that vanished with a dropped schema.
_SWAP_STATES = {"AS001", "42P01", "42883", "0A000"}


def _swapped(e: DatabaseUnavailable) -> bool:
    return getattr(e.__cause__, "sqlstate", None) in _SWAP_STATES


def _duplicate(e: DatabaseUnavailable) -> bool:
    """A unique violation: a row the batch COPYed is already stored."""
    return getattr(e.__cause__, "sqlstate", None) == "23505"


def _raced(e: DatabaseUnavailable) -> bool:
    """Lost a race with another projector (fold_batch's serialization failure) or a deadlock."""
    return getattr(e.__cause__, "sqlstate", None) in ("40001", "40P01")


_T = TypeVar("_T")


def _run(steps: Generator[None, None, _T]) -> _T:
    """Run a step generator (``Projector._decode_steps``, ``_prepare_steps``) to its result."""
    try:
        while True:
            next(steps)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def _run_yielding(steps: Generator[None, None, _T]) -> _T:
    """Run a step generator, letting the event loop run at each step: see ``_Pipeline``."""
    try:
        while True:
            next(steps)
            await asyncio.sleep(0)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


_YIELD_EVERY = 200
"""Records decoded or events folded between two turns of the event loop in a rebuild (_Pipeline)."""


class _Pipeline:
    """Rebuild-mode folding with one batch written while the next is decoded and folded.

    A rebuild is the only writer of its schema, so it can overlap PostgreSQL's work on batch N with
    its own on batch N+1, under one ordering rule: N+1's starting states come from N's in-memory
    result for the assessments N touched (N may not be committed yet), and from PostgreSQL for all
    others (untouched by N, so their committed rows are final). Writes stay strictly in order:
    N+1's write starts only after N's has committed, so fold_batch's version guard still holds.

    When PostgreSQL refuses N (``DataRejected``), N is folded again assessment by assessment
    (``Projector._fold_isolating``, which quarantines as the live projector does) and N+1, whose
    states assumed N's in-memory result, is prepared again from the committed rows and the new
    quarantine list before it is written.

    The overlap needs turns of the event loop: N's write is a task on the same loop, and each of
    its steps (three COPYs, fold_staged, COMMIT) waits for PostgreSQL and then needs the loop to
    send the next. Decoding and folding N+1 are synchronous, so they give the loop a turn every
    ``_YIELD_EVERY`` records (``_run_yielding``); without those turns N's write advanced one step
    per batch and the two barely overlapped (a 200,000-event rebuild: 27.3 s before, 21.5 s after).
    """

    def __init__(self, projector: Projector) -> None:
        self.p = projector
        self._writing: asyncio.Task[None] | None = None
        self._writing_batch: _Batch | None = None
        self._in_flight: dict[str, Assessment] = {}

    async def fold(self, records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        p = self.p
        assert p._pool is not None
        await p.learn_schemas(records)
        batch, stats = await _run_yielding(p._decode_steps(records, _YIELD_EVERY))
        for e in batch.unresolved.values():
            # A rebuild must not be swapped in without a record of the log: it stops with the error.
            raise e
        prepared = await self._prepare(batch, stats)
        if await self.drain():
            # N was refused and re-folded with quarantine: N+1's in-memory starting states are stale.
            self._in_flight = {}
            stats = FoldStats(batches=1, undecodable=stats.undecodable)
            prepared = await self._prepare(batch, stats)
        rows, changed, held = prepared
        self._in_flight = changed
        self._writing_batch = batch
        self._writing = asyncio.create_task(self._write(rows, held, batch.fences))
        p.stats.add(stats)

    async def _prepare(self, batch: _Batch, stats: FoldStats) -> tuple[
        _Prepared, dict[str, Assessment], list[tuple[ConsumerRecord[bytes, bytes], Event]]
    ]:
        p = self.p
        assert p._pool is not None
        rest, held = batch.split_held(p._quarantined)
        ids = set(rest.event_ids())
        states = {i: self._in_flight[i] for i in ids if i in self._in_flight}
        missing = [i for i in ids if i not in states and storable(i) == i]  # a NUL id has no row to read
        if missing:
            with translate_db_errors("reading states to rebuild"):
                states.update(await fetch_assessments(p._pool, missing, schema=p.schema))
        rows, changed = await _run_yielding(p._prepare_steps(rest, states, stats, _YIELD_EVERY))
        stats.held += len(held)
        return rows, changed, held

    async def _write(self, rows: _Prepared, held: list[tuple[ConsumerRecord[bytes, bytes], Event]],
                     fences: list[tuple[str, int, int, int]]) -> None:
        assert self.p._pool is not None
        with translate_db_errors("writing a rebuilt batch"):
            async with self.p._pool.acquire() as conn:
                # Counted when written, not when prepared: only PostgreSQL knows which ids it holds.
                self.p.stats.reused_ids += await self.p._store(
                    conn, rows, [(storable(ev.assessment_id), rec) for rec, ev in held], fences,
                    "writing a rebuilt batch")

    async def drain(self) -> bool:
        """Wait for the batch being written; True when PostgreSQL refused it and it was re-folded
        with quarantine instead."""
        writing, self._writing = self._writing, None
        batch, self._writing_batch = self._writing_batch, None
        if writing is None:
            return False
        try:
            await writing
        except DataRejected as e:
            assert batch is not None
            stats = FoldStats()
            await self.p._fold_isolating(batch, stats, e)
            # The batch's own counts were added when it was prepared; only the quarantine's here.
            self.p.stats.quarantined += stats.quarantined
            self.p.stats.held += stats.held
            self.p.stats.unstorable_outcomes += stats.unstorable_outcomes
            self.p.stats.reused_ids += stats.reused_ids
            return True
        return False


class _SeekToStoredOffsets(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, projector: Projector) -> None:
        self.p = projector

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Nothing to flush: each batch commits its offsets with its rows. A revoked partition is
        # no longer positioned: if it comes back, it is sought again before anything is folded.
        for tp in revoked:
            self.p._positioned.pop(tp, None)
        self.p._states.clear()  # the next owner may fold them before they come back

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        consumer = self.p._consumer
        if consumer is None or not assigned:
            return
        # Ordering: pause and forget, synchronously, before the first await. While we read the
        # stored offsets, aiokafka is already fetching these partitions at Kafka's committed
        # offsets; paused, their records are never returned, and _accept drops any that slip by.
        consumer.pause(*assigned)
        for tp in assigned:
            self.p._positioned.pop(tp, None)
        try:
            stored = await self.p._seek_to_stored(sorted(assigned))
        except BackendError as e:
            # aiokafka would swallow this and leave the partitions at Kafka's offsets; they stay
            # paused and unpositioned instead, and the fold loop seeks them once PostgreSQL answers.
            log.warning("assigned %s but could not read their stored offsets (%s); they stay paused until "
                        "PostgreSQL answers", sorted(assigned), e)
            return
        log.info("assigned %s; resuming from stored offsets %s", sorted(assigned), stored)
