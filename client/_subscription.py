"""``Subscription``: the events of the log, decoded, with their positions, for a service that
builds its own state from them (docs/subscriptions.md).

``AssessmentStore.subscribe(...)`` returns one: an async iterator of ``EventRecord`` (the
``Event`` and its topic, partition, offset, timestamp and the ``Position`` right after it), and
an async context manager whose exit (or ``aclose``, idempotent) releases the Kafka consumer. It
reads through ``TopicReader`` (assigned partitions, no consumer group: see ``_reader.py``),
catches up from its start and then follows the log live.

What it does with each record, in log order per partition:

* Fences first (``streams/_fence.py``), as the projector does: a processor's fence record is
  passed over, and a record a zombie processor wrote after a later owner's fence is passed over
  too (logged, counted in ``stats.fenced``): the projection never folds them either. The fence in
  force travels in the ``Position`` (``@epoch``), so a resumed subscription judges exactly as an
  uninterrupted one. A subscription started at a time or at the end does not know the fence in
  force there; it learns it from the next fence, or from the ``writer-epoch`` of the current
  owner's first record (an owner writes its fence before its first record, so a record of epoch
  E proves fence E is in force).
* Decoding goes through the same codec and ``SchemaResolver`` as the projector: the writer
  schemas of a batch that the codec does not know are looked up on the schemas topic (one read
  per batch, none when all are known). A record still unresolvable raises ``UnresolvableSchema``
  naming it, and the subscription's position stays *before* it: nothing is skipped, and a
  service restarted once the schema is published resumes at that record. Bytes that are not an
  event at all (corrupt) are what the projector keeps as an ``undecodable`` anomaly: logged at
  ERROR, counted in ``stats.undecodable`` and passed over, or raised with ``undecodable="raise"``.
  Records of the format before single objects (the ``schema-fingerprint`` header) decode as well.
* Filters (``types``, ``assessment_ids``) apply after decoding; a filtered-out record still moves
  the position, so a checkpoint taken at the next delivered event covers it.

Positions: ``record.position`` is where to resume to read what comes after ``record``;
``subscription.position`` is the same after the last record the iterator handled (delivered or
passed over). Store either with the state it produced, in one transaction (``PositionTable``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Literal, Self

from aiokafka import TopicPartition

from assessment_store.core import (
    CodecError,
    Event,
    EventType,
    Settings,
    UnresolvableSchema,
    ValidationError,
    check_text,
)
from assessment_store.schemas import EventCodec, record_fingerprint
from assessment_store.streams import LogFence, Principal, SchemaResolver, Verdict

from ._position import Position
from ._reader import Record, StartAt, TopicReader

__all__ = ["EventRecord", "Subscription", "SubscriptionStats", "resolve_start"]

log = logging.getLogger("assessment_store.client.subscription")

_MAX_FILTER = 10_000


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event of the log with where it is."""

    event: Event
    topic: str
    partition: int
    offset: int
    timestamp: datetime
    """the Kafka record's timestamp (when the processor appended it)"""
    position: Position
    """resume here to read what comes after this event"""

    @property
    def type(self) -> EventType:
        return self.event.type

    @property
    def assessment_id(self) -> str:
        return self.event.assessment_id


@dataclass
class SubscriptionStats:
    delivered: int = 0
    filtered: int = 0
    """decoded but not wanted (``types``, ``assessment_ids``)"""
    fences: int = 0
    """processor fence records passed over"""
    fenced: int = 0
    """records of a processor that had lost the partition: passed over, as the projection does"""
    undecodable: int = 0
    schema_lookups: int = 0
    partitions_added: int = 0


def resolve_start(topic: str, *, from_position: Position | str | None, from_time: datetime | None,
                  from_end: bool) -> StartAt:
    """One start out of the three ways to give it (none: the beginning)."""
    given = [x for x in (from_position is not None, from_time is not None, from_end) if x]
    if len(given) > 1:
        raise ValidationError("start", "give at most one of from_position, from_time and from_end")
    if from_position is not None:
        pos = Position.parse(from_position) if isinstance(from_position, str) else from_position
        if pos.topic != topic:
            raise ValidationError("from_position", f"it is a position on {pos.topic!r}, not on {topic!r}")
        return pos
    if from_time is not None:
        if from_time.tzinfo is None:
            raise ValidationError("from_time", "must carry a time zone (e.g. datetime.now(UTC))")
        return from_time
    return "end" if from_end else "beginning"


def _types(types: Iterable[str | EventType] | None) -> frozenset[str] | None:
    if types is None:
        return None
    if isinstance(types, str):
        types = [types]
    names = {t.value for t in EventType}
    wanted = frozenset(t.value if isinstance(t, EventType) else t for t in types)
    unknown = sorted(wanted - names)
    if unknown:
        raise ValidationError("types", f"unknown event type(s) {unknown}; known: {sorted(names)}")
    return wanted


def _ids(assessment_ids: Iterable[str] | None) -> frozenset[str] | None:
    if assessment_ids is None:
        return None
    if isinstance(assessment_ids, str):
        assessment_ids = [assessment_ids]
    ids = frozenset(assessment_ids)
    if len(ids) > _MAX_FILTER:
        raise ValidationError("assessment_ids", f"at most {_MAX_FILTER} ids")
    for i in ids:
        check_text("assessment_ids", i)
    return ids


class Subscription:
    """Decoded events of the events topic with their positions; see the module docstring."""

    def __init__(self, settings: Settings, *, from_position: Position | str | None = None,
                 from_time: datetime | None = None, from_end: bool = False,
                 types: Iterable[str | EventType] | None = None, assessment_ids: Iterable[str] | None = None,
                 undecodable: Literal["skip", "raise"] = "skip", principal: Principal = "client",
                 partition_check_s: float = 30.0, max_records: int = 500) -> None:
        self.settings = settings
        self.topic = settings.events_topic
        start = resolve_start(self.topic, from_position=from_position, from_time=from_time, from_end=from_end)
        if undecodable not in ("skip", "raise"):
            raise ValidationError("undecodable", "'skip' or 'raise'")
        self.types = _types(types)
        self.assessment_ids = _ids(assessment_ids)
        self.undecodable = undecodable
        self.stats = SubscriptionStats()
        self.reader = TopicReader(settings, self.topic, start=start, follow=True, principal=principal,
                                  partition_check_s=partition_check_s, max_records=max_records)
        self.codec = EventCodec()
        self.resolver = SchemaResolver(settings, principal, [self.codec.avro])
        start_epochs = start.epoch_map() if isinstance(start, Position) else {}
        self._fence = LogFence({TopicPartition(self.topic, p): e for p, e in start_epochs.items()})
        self._next: dict[int, int] = {}
        self._pending: deque[Record] = deque()
        self._unlearned = False
        self._started = False
        self._closed = False

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and seek (also done by the first iteration); idempotent."""
        if self._started or self._closed:
            return
        await self.reader.start()
        self._started = True
        self._sync_partitions()

    async def aclose(self) -> None:
        """Release the consumer; idempotent, and iteration ends (StopAsyncIteration) afterwards."""
        self._closed = True
        self._pending.clear()
        await self.reader.stop()

    close = aclose

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    # --- where it stands --------------------------------------------------------------

    @property
    def caught_up(self) -> bool:
        """True once every record that was in the log when the subscription started was handled."""
        return self._started and not self._pending and all(
            self._next.get(p, 0) >= t for p, t in self.reader.targets.items())

    @property
    def position(self) -> Position:
        """After the last record handled (delivered, filtered or passed over); before the first
        record when none was: the start."""
        epochs = {tp.partition: e for tp, e in self._fence.epochs.items()}
        return Position.of(self.topic, self._next, epochs)

    def _sync_partitions(self) -> None:
        for p, off in self.reader.start_offsets.items():
            self._next.setdefault(p, off)
        self.stats.partitions_added = self.reader.partitions_added

    # --- iteration --------------------------------------------------------------------

    async def __anext__(self) -> EventRecord:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if not self._pending:
                await self.start()
                batch = await self.reader.next_batch()
                if batch is None:
                    raise StopAsyncIteration
                if len(self.reader.start_offsets) != len(self._next):
                    self._sync_partitions()
                # Pending before anything is awaited: a cancelled wait (a timeout) loses no record.
                self._pending.extend(batch)
                self._unlearned = bool(batch)
                continue
            if self._unlearned:
                await self._learn(list(self._pending))
                self._unlearned = False
            rec = self._pending[0]
            try:
                delivered = self._handle(rec)
            except UnresolvableSchema:
                # The position stays before this record: a restart reads it again, nothing is skipped.
                raise
            self._pending.popleft()
            if delivered is not None:
                self.stats.delivered += 1
                return delivered

    async def _learn(self, batch: list[Record]) -> None:
        """Make the batch's writer schemas known (one read of the schemas topic, if any is unknown)."""
        fps = {fp for r in batch if (fp := record_fingerprint(r.value, r.headers)) is not None}
        if self.resolver.unknown(fps):
            await self.resolver.resolve(fps)
            self.stats.schema_lookups = self.resolver.lookups

    def _advance(self, rec: Record) -> None:
        self._next[rec.partition] = rec.offset + 1

    def _handle(self, rec: Record) -> EventRecord | None:
        tp = TopicPartition(rec.topic, rec.partition)
        verdict, epoch = self._fence.judge(tp, rec.headers)
        if verdict is Verdict.FENCE:
            self.stats.fences += 1
            self._advance(rec)
            return None
        if verdict is Verdict.FENCED:
            self.stats.fenced += 1
            log.warning("%s/%d/%d: written at epoch %s after the fence of epoch %d (a processor that had lost the "
                        "partition): passed over, as the projection does", rec.topic, rec.partition, rec.offset,
                        epoch, self._fence.current(tp))
            self._advance(rec)
            return None
        if epoch is not None and epoch > self._fence.current(tp):
            # The owner of epoch E wrote fence E before its first record: the fence is at least E.
            self._fence.epochs[tp] = epoch
        try:
            event = self.codec.decode(rec.value, rec.headers)
        except UnresolvableSchema as e:
            raise e.at(rec.topic, rec.partition, rec.offset) from e
        except CodecError as e:
            if self.undecodable == "raise":
                raise CodecError(f"{rec.topic}/{rec.partition}/{rec.offset}: {e.reason}") from e
            self.stats.undecodable += 1
            log.error("%s/%d/%d: not an event (%s): passed over, as the projection keeps it as an anomaly",
                      rec.topic, rec.partition, rec.offset, e.reason)
            self._advance(rec)
            return None
        self._advance(rec)
        if (self.types is not None and event.type.value not in self.types) or \
                (self.assessment_ids is not None and event.assessment_id not in self.assessment_ids):
            self.stats.filtered += 1
            return None
        return EventRecord(event, rec.topic, rec.partition, rec.offset,
                           datetime.fromtimestamp(rec.timestamp / 1000, UTC), self.position)
