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
  rolls back rows and offsets together; after COMMIT both are durable. Re-reading a batch
  after a crash is therefore harmless, and nothing is skipped.
* Offsets only move forward (``GREATEST``). During a rebalance two projectors may briefly fold
  the same records: each new state is written only if its row is still at the version it was
  folded from (``public.fold_batch``, migration 003), else the whole batch rolls back and is
  re-read and re-folded, where the version check makes it a no-op.
* The whole batch is written by one call of ``public.fold_batch``: one round trip, one
  transaction.
* Offsets are also committed to Kafka after the PostgreSQL COMMIT, only so that standard lag
  tools see the group's position; they are never read back.
* ``pg_notify`` runs inside the transaction, so a waiter is woken only for committed state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from assessment_store._config import Settings
from assessment_store._lifecycle import AsyncLifecycle
from assessment_store._domain import evolve
from assessment_store._errors import AssessmentStoreError, CodecError, DatabaseUnavailable, KafkaUnavailable
from assessment_store._model import Assessment, Event, Outcome, Payload
from schemas import EventCodec, OutcomeCodec
from streams import COMMAND_OFFSET_HEADER, ensure_topics, partition_counts, translate_kafka_errors

from ._db import LIVE_SCHEMA, check_schema_name, create_pool, migrate, translate_db_errors
from ._queries import assessment_to_row, fetch_assessments

__all__ = ["CHANGES_CHANNEL", "OUTCOMES_CHANNEL", "FoldStats", "Projector"]

log = logging.getLogger("assessment_store.projector")

_FOLD_ATTEMPTS = 10

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

    def add(self, other: FoldStats) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class _Batch:
    events: list[tuple[ConsumerRecord[bytes, bytes], Event]] = field(default_factory=list)
    outcomes: list[tuple[ConsumerRecord[bytes, bytes], Outcome]] = field(default_factory=list)
    anomalies: list[tuple[Any, ...]] = field(default_factory=list)
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)


def _anomaly(kind: str, rec: ConsumerRecord[bytes, bytes], detail: str, ev: Event | None = None,
             expected: int | None = None, raw: bytes | None = None) -> tuple[Any, ...]:
    return (
        kind, ev.assessment_id if ev else (rec.key or b"").decode(errors="replace"), ev.version if ev else None,
        expected, ev.event_id if ev else None, rec.topic, rec.partition, rec.offset, detail, raw,
    )


class Projector(AsyncLifecycle):
    """Folds the events and outcomes topics into one projection schema.

    Live (the default): a member of the projector consumer group, folding into ``projection``;
    several processes share the partitions. Rebuild (``schema=...``, ``assign_all=True``): no
    group; it owns every partition and folds into its own schema, up to given target offsets.
    """

    def __init__(
        self, settings: Settings, *, group: str | None = None, schema: str = LIVE_SCHEMA, assign_all: bool = False
    ) -> None:
        self.s = settings
        self.group = group or settings.projector_group
        self.schema = check_schema_name(schema)
        self.assign_all = assign_all
        self.codec = EventCodec()
        self.outcome_codec = OutcomeCodec()
        self.stats = FoldStats()
        self._pool: asyncpg.Pool | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._generation = 0
        self._pending_mirror: dict[TopicPartition, int] = {}
        self._next_mirror = 0.0

    @property
    def topics(self) -> list[str]:
        return [self.s.events_topic, self.s.outcomes_topic]

    async def start(self) -> None:
        if self._consumer is not None:
            return
        await ensure_topics(self.s)
        await self._open_pool()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.s.kafka_bootstrap,
            group_id=None if self.assign_all else self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=self.s.projector_batch_size,
            fetch_max_wait_ms=self.s.fetch_max_wait_ms,
            session_timeout_ms=self.s.consumer_session_timeout_ms,
            heartbeat_interval_ms=max(300, self.s.consumer_session_timeout_ms // 3),
        )
        if not self.assign_all:
            consumer.subscribe(self.topics, listener=_SeekToStoredOffsets(self))
        # Set before start(): the first assignment callback may run as soon as the group is joined.
        self._consumer = consumer
        with translate_kafka_errors(f"starting projector consumer on {self.s.events_topic}"):
            try:
                await consumer.start()
                if self.assign_all:
                    counts = await partition_counts(self.s, self.topics)
                    partitions = [TopicPartition(t, p) for t in self.topics for p in range(counts.get(t, 0))]
                    if not partitions:
                        raise KafkaUnavailable(f"no partitions found for {self.topics}")
                    consumer.assign(partitions)
                    await self._seek_to_stored(partitions)
            except BaseException:
                self._consumer = None
                await consumer.stop()
                raise

    async def _open_pool(self) -> None:
        # synchronous_commit=off: a PostgreSQL crash may lose the last few folded batches, but
        # always rows and offsets together (one transaction), so the projector re-reads them from
        # Kafka on restart. The log stays the durable record; the fold saves a WAL flush per batch.
        self._pool = await create_pool(self.s, min_size=1, max_size=2, synchronous_commit=False)
        async with self._pool.acquire() as conn:
            await migrate(conn)
            with translate_db_errors(f"reading the generation of {self.schema}"):
                self._generation = int(await conn.fetchval(f"SELECT generation FROM {self.schema}.meta"))

    async def stop(self) -> None:
        if self._consumer is not None and not self.assign_all:
            await self._mirror_offsets(force=True)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()



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

    async def _seek_to_stored(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Position the consumer at the stored offsets (the beginning where none is stored)."""
        consumer = self._consumer
        assert consumer is not None
        stored = await self.stored_offsets(partitions)
        for tp in partitions:
            if tp in stored:
                consumer.seek(tp, stored[tp])
            else:
                await consumer.seek_to_beginning(tp)
        return stored

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Fold until ``stop`` is set (or forever)."""
        await self.start()
        assert self._consumer is not None
        stop = stop or asyncio.Event()
        while not stop.is_set():
            with translate_kafka_errors("fetching events"):
                records = await self._consumer.getmany(timeout_ms=200, max_records=self.s.projector_batch_size)
            if records:
                await self.fold(records)

    async def fold_until(
        self, targets: dict[TopicPartition, int], on_batch: Callable[[int], None] | None = None
    ) -> None:
        """(Rebuild mode) fold until every partition's position reaches its target offset, and
        not one record beyond it: the rebuild must equal the live projection at those offsets."""
        consumer = self._consumer
        assert consumer is not None and self.assign_all
        pipeline = _Pipeline(self)
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
                records = await consumer.getmany(*behind, timeout_ms=500, max_records=self.s.projector_batch_size)
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
        batch = _Batch()
        stats = FoldStats(batches=1)
        for tp, recs in records.items():
            for rec in recs:
                try:
                    if rec.topic == self.s.outcomes_topic:
                        batch.outcomes.append((rec, self.outcome_codec.decode(rec.value, rec.headers)))
                    else:
                        batch.events.append((rec, self.codec.decode(rec.value, rec.headers)))
                except CodecError as e:
                    stats.undecodable += 1
                    batch.anomalies.append(_anomaly("undecodable", rec, str(e), raw=rec.value))
            if recs:
                batch.next_offsets[tp] = recs[-1].offset + 1
        return batch, stats

    async def fold(self, records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> FoldStats:
        batch, stats = self._decode(records)
        assert self._pool is not None
        for attempt in range(1, _FOLD_ATTEMPTS + 1):
            tried = FoldStats(batches=1, undecodable=stats.undecodable)
            try:
                with translate_db_errors("folding a batch"):
                    async with self._pool.acquire() as conn:
                        await self._apply(conn, batch, tried)
                break
            except DatabaseUnavailable as e:
                if _swapped(e) and not self.assign_all:
                    # A rebuilt projection was swapped in: its stored offsets are the truth now.
                    await self._after_swap()
                    return tried
                if not e.retriable or attempt == _FOLD_ATTEMPTS:
                    raise
                log.info("batch raced another projector (attempt %d): re-reading and re-folding", attempt)
        self.stats.add(tried)
        self._pending_mirror.update(batch.next_offsets)
        await self._mirror_offsets()
        return tried

    async def _after_swap(self) -> None:
        """Reconnect (fresh sessions, fresh plans), read the new generation, and move every owned
        partition to the offsets stored in the swapped-in projection. Records fetched past them are
        folded again: the version check makes that a no-op."""
        log.warning("the projection was swapped by a rebuild: reconnecting and resuming from its offsets")
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        await self._open_pool()
        if self._consumer is not None:
            await self._seek_to_stored(sorted(self._consumer.assignment()))
        self._pending_mirror.clear()

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

    def _fold(self, batch: _Batch, states: dict[str, Assessment], stats: FoldStats) -> tuple[
        dict[str, tuple[int, Assessment]], list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]
    ]:
        """Fold ``batch`` onto ``states`` in memory: (changed id -> (folded-from version, state)),
        history rows, anomaly rows, and the accepted-outcome rows the events stand for (the
        processor writes outcome records only for rejections). Pure: same inputs, same rows."""
        changed: dict[str, tuple[int, Assessment]] = {}
        history: list[tuple[Any, ...]] = []
        accepted: list[tuple[Any, ...]] = []
        anomalies = list(batch.anomalies)
        for rec, ev in batch.events:
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
                anomalies.append(_anomaly("unfoldable", rec, str(e), ev, expected))
                continue
            prev = changed[ev.assessment_id][0] if ev.assessment_id in changed else expected - 1
            states[ev.assessment_id] = new
            changed[ev.assessment_id] = (prev, new)
            stats.applied += 1
            history.append((
                ev.assessment_id, ev.version, ev.event_id, ev.type.value, ev.occurred_at, ev.recorded_at,
                ev.source.value, ev.correlation_id, ev.causation_id, _json(_payload_fields(ev.payload)),
                rec.topic, rec.partition, rec.offset,
            ))
            if ev.causation_id is not None:
                raw = next((v for k, v in rec.headers if k == COMMAND_OFFSET_HEADER), None)
                accepted.append((
                    ev.causation_id, ev.assessment_id, True, ev.version, ev.event_id, None, None, None,
                    ev.recorded_at, rec.partition, rec.offset, int(raw) if raw is not None else -1,
                ))
        return changed, history, anomalies, accepted

    async def _apply(self, conn: asyncpg.Connection, batch: _Batch, stats: FoldStats) -> None:
        ids = list({ev.assessment_id for _, ev in batch.events})
        states: dict[str, Assessment] = await fetch_assessments(conn, ids, schema=self.schema) if ids else {}
        args, _changed = self._prepare(batch, states, stats)
        await conn.execute(_FOLD_BATCH, *args)

    def _prepare(
        self, batch: _Batch, states: dict[str, Assessment], stats: FoldStats
    ) -> tuple[list[Any], dict[str, Assessment]]:
        """Fold in memory and build fold_batch's arguments; also returns the new states."""
        changed, history, anomalies, accepted = self._fold(batch, states, stats)
        rows = [(prev, *assessment_to_row(a)) for prev, a in changed.values()]
        a_cols = _columns(rows, 20)
        # request_data / result_data travel as JSON text (cast to jsonb in SQL).
        a_cols[6] = [_json(v) for v in a_cols[6]]
        a_cols[7] = [_json(v) for v in a_cols[7]]
        outcome_rows = [
            (o.command_id, o.assessment_id, o.accepted, o.version, o.event_id, o.error_type, o.error_message,
             _json(o.error_details) if o.error_details is not None else None, o.processed_at, rec.partition,
             rec.offset, o.command_offset)
            for rec, o in batch.outcomes
        ] + accepted
        offsets = [(tp.topic, tp.partition, o) for tp, o in batch.next_offsets.items()]
        notify_changes = [f"{a.assessment_id}|{a.version}|{a.state.value}" for _, a in changed.values()]
        # Duplicates too: the client that re-sent a command waits for this wake-up.
        notify_outcomes = list({f"{r[0]}|{r[1]}|{int(r[2])}|{r[3] or ''}" for r in outcome_rows})
        args = [
            self.schema, not self.assign_all, self._generation, self.group, *a_cols, *_columns(history, 13),
            *_columns(outcome_rows, 12), *_columns(anomalies, 10), *_columns(offsets, 3), notify_changes,
            notify_outcomes,
        ]
        return args, {aid: a for aid, (_prev, a) in changed.items()}


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows -> one list per column (the parallel arrays fold_batch takes)."""
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def _payload_fields(p: Payload) -> dict[str, Any]:
    # The payload classes are flat slotted dataclasses: no deep copy needed (dataclasses.asdict
    # deep-copies every value and was the single largest cost of a rebuild).
    return {name: getattr(p, name) for name in p.__slots__}


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


_FOLD_BATCH = "SELECT public.fold_batch(" + ", ".join(f"${i}" for i in range(1, 65)) + ")"

# SQLSTATEs that mean "the projection schema changed under this session": our own AS001 from
# fold_batch (generation mismatch), and a table/function that vanished with a dropped schema.
_SWAP_STATES = {"AS001", "42P01", "42883", "0A000"}


def _swapped(e: DatabaseUnavailable) -> bool:
    return getattr(e.__cause__, "sqlstate", None) in _SWAP_STATES


class _Pipeline:
    """Rebuild-mode folding with one batch written while the next is decoded and folded.

    A rebuild is the only writer of its schema, so it can overlap PostgreSQL's work on batch N with
    its own on batch N+1, under one ordering rule: N+1's starting states come from N's in-memory
    result for the assessments N touched (N may not be committed yet), and from PostgreSQL for all
    others (untouched by N, so their committed rows are final). Writes stay strictly in order:
    N+1's write starts only after N's has committed, so fold_batch's version guard still holds.
    """

    def __init__(self, projector: Projector) -> None:
        self.p = projector
        self._writing: asyncio.Task[None] | None = None
        self._in_flight: dict[str, Assessment] = {}

    async def fold(self, records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        p = self.p
        assert p._pool is not None
        batch, stats = p._decode(records)
        ids = {ev.assessment_id for _, ev in batch.events}
        states = {i: self._in_flight[i] for i in ids if i in self._in_flight}
        missing = [i for i in ids if i not in states]
        if missing:
            with translate_db_errors("reading states to rebuild"):
                states.update(await fetch_assessments(p._pool, missing, schema=p.schema))
        args, changed = p._prepare(batch, states, stats)
        await self.drain()
        self._in_flight = changed
        self._writing = asyncio.create_task(self._write(args))
        p.stats.add(stats)

    async def _write(self, args: list[Any]) -> None:
        assert self.p._pool is not None
        with translate_db_errors("writing a rebuilt batch"):
            await self.p._pool.execute(_FOLD_BATCH, *args)

    async def drain(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing


class _SeekToStoredOffsets(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, projector: Projector) -> None:
        self.p = projector

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Nothing to flush: each batch commits its offsets with its rows.
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if self.p._consumer is None or not assigned:
            return
        stored = await self.p._seek_to_stored(assigned)
        log.info("assigned %s; resuming from stored offsets %s", sorted(assigned), stored)
