"""The command processor: the single writer of the events topic.

Kafka has no conditional append, so concurrency control lives here. Commands arrive on
``assessments.commands`` keyed by assessment id; the processor that owns command partition
*p* (consumer-group assignment) is the only writer of partition *p* of ``assessments.events``
and ``assessments.outcomes``. It holds the folded state of every assessment of its partitions
in memory, checks each command with ``decide`` and appends the resulting event with the next
gapless version (the event, whose ``causation_id`` is the command id, is the accepted outcome), or
writes a rejection outcome with the typed error.

Ordering and crash safety, without Kafka transactions (see the note below on why not):

1. Within a partition, commands are handled strictly in offset order; the event of command
   ``o`` is produced with a ``command-offset: o`` header.
2. For a batch, every event is acknowledged (acks=all, idempotent producer) *before* any outcome
   record of the batch is sent, and every outcome is acknowledged before the command offsets
   are committed. So a rejection is never announced on a state whose events are not durable,
   and a committed command always has its outcome (its event, or its outcome record).
3. On assignment the processor rebuilds partition *p* from the log: it folds the events whose
   command offset is below the group's committed offset ``c``, and *holds back* the events of
   commands ``>= c`` (those are commands it will consume again). Re-consuming command ``o``
   then either finds its held event (the command was accepted before the crash: apply the event,
   append nothing) or finds none (it was rejected or never handled: decide again, against exactly
   the state it saw the first time, because all earlier commands' events are applied and no
   later one's). ``decide``'s accept/reject answer does not depend on the clock, so the second
   answer equals the first.
4. A command id seen before (from the outcome records and from the events' causation ids) is
   answered with its original outcome, an outcome record marked ``duplicate``; no event.

Why not Kafka transactions: measured on the local Kafka 4.3 broker with aiokafka 0.14, a
transaction (produce + send_offsets_to_transaction + commit) costs ~26 ms at p50, ~31 ms at p95
even with retry_backoff_ms=2 (CONCURRENT_TRANSACTIONS back-off between consecutive transactions),
which alone exceeds the 20 ms p95 command latency budget. Steps 1-4 give the same effect for
this workload (no lost command, no duplicate event), except against a *zombie* processor that
keeps writing after losing its partition (e.g. a long GC-like stall past the session timeout);
transactions would fence it. The projector's version check keeps the read model correct even
then (a duplicate version is counted, never applied).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from assessment_store._config import Settings
from assessment_store._lifecycle import AsyncLifecycle
from assessment_store._domain import decide, evolve
from assessment_store._errors import CodecError, StackError, StoreUsageError
from assessment_store._model import (
    Assessment,
    CommandEnvelope,
    Event,
    EventSource,
    ExpireDeadline,
    Outcome,
    State,
)
from schemas import CommandCodec, EventCodec, OutcomeCodec

from ._kafka import ensure_topics, idempotent_producer, kafka_client_options, partition_counts, translate_kafka_errors

__all__ = ["COMMAND_OFFSET_HEADER", "CommandProcessor", "ProcessorStats"]

log = logging.getLogger("assessment_store.processor")

COMMAND_OFFSET_HEADER = "command-offset"


@dataclass
class ProcessorStats:
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    replayed: int = 0
    dead_lettered: int = 0
    deadlines_fired: int = 0
    rebuilt_events: int = 0


@dataclass
class _Partition:
    """The processor's state for one owned partition."""

    states: dict[str, Assessment] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    held: dict[int, Event] = field(default_factory=dict)
    """command offset -> event appended before the last handover, applied when re-consumed"""
    deadlines: list[tuple[datetime, str, datetime, int]] = field(default_factory=list)
    """heap of (fires_at, assessment_id, started_at, timeout_ms)"""


def _header(headers: tuple[tuple[str, bytes], ...] | list[tuple[str, bytes]], name: str) -> bytes | None:
    return next((v for k, v in headers if k == name), None)


class CommandProcessor(AsyncLifecycle):
    """Owns the partitions the consumer group gives it; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.stats = ProcessorStats()
        self._commands = CommandCodec()
        self._events = EventCodec()
        self._outcomes = OutcomeCodec()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._parts: dict[int, _Partition] = {}
        # Assigned partitions not yet rebuilt. They stay paused (nothing fetched) until the main
        # loop has rebuilt them: rebuilding inside the rebalance callback would stall the group
        # protocol for as long as the rebuild takes and get this member expelled.
        self._pending: dict[int, int] = {}
        self._generation = 0
        # Held while a batch is handled and while partitions are assigned or revoked, so a
        # rebalance never sees half a batch and a batch never runs on a half-built partition.
        self._lock = asyncio.Lock()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._consumer is not None:
            return
        s = self.s
        await ensure_topics(s)
        counts = await partition_counts(s, [s.commands_topic, s.events_topic, s.outcomes_topic])
        if len(set(counts.values())) != 1:
            raise StackError(
                f"topics must have equal partition counts for single-writer routing, found {counts}"
            )
        producer = idempotent_producer(s, "processor")
        with translate_kafka_errors("starting the processor's producer"):
            await producer.start()
        self._producer = producer
        consumer = AIOKafkaConsumer(
            **kafka_client_options(s, "processor"), group_id=s.processor_group, enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level="read_committed", max_poll_records=1000,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            # A processor killed with -9 holds its partitions until its session expires.
            session_timeout_ms=s.consumer_session_timeout_ms,
            heartbeat_interval_ms=max(300, s.consumer_session_timeout_ms // 3),
        )
        consumer.subscribe([s.commands_topic], listener=_Rebalance(self))
        self._consumer = consumer  # before start(): the first assignment may arrive during it
        try:
            with translate_kafka_errors("starting the processor's consumer"):
                await consumer.start()
        except BaseException:
            self._consumer = None
            await producer.stop()
            self._producer = None
            raise

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
        self._parts.clear()



    @property
    def owned_partitions(self) -> list[int]:
        return sorted(self._parts)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        await self.start()
        assert self._consumer is not None
        stop = stop or asyncio.Event()
        while not stop.is_set():
            await self._rebuild_pending()
            with translate_kafka_errors("fetching commands"):
                batches = await self._consumer.getmany(timeout_ms=100)
            if batches:
                committed = await self._handle(batches)
                if committed:
                    await self._commit(committed)
            await self._fire_deadlines()

    # --- rebuilding a partition from the log --------------------------------------------------

    async def _rebuild_pending(self) -> None:
        assert self._consumer is not None
        for partition, generation in list(self._pending.items()):
            part = await self._rebuild(partition)
            async with self._lock:
                # Installed only if no rebalance happened meanwhile (else it is rebuilt again).
                if self._pending.get(partition) == generation:
                    del self._pending[partition]
                    self._parts[partition] = part
                    self._consumer.resume(TopicPartition(self.s.commands_topic, partition))

    async def _rebuild(self, partition: int) -> _Partition:
        s = self.s
        assert self._consumer is not None
        cmd_tp = TopicPartition(s.commands_topic, partition)
        committed = await self._consumer.committed(cmd_tp) or 0
        part = _Partition()
        reader = AIOKafkaConsumer(
            **kafka_client_options(s, "processor"), enable_auto_commit=False, isolation_level="read_committed",
            group_id=None, auto_offset_reset="earliest",
        )
        ev_tp, out_tp = TopicPartition(s.events_topic, partition), TopicPartition(s.outcomes_topic, partition)
        with translate_kafka_errors(f"rebuilding partition {partition}"):
            await reader.start()
            try:
                reader.assign([ev_tp, out_tp])
                ends = await reader.end_offsets([ev_tp, out_tp])
                await reader.seek_to_beginning(ev_tp, out_tp)
                done = {tp for tp, end in ends.items() if end == 0}
                while len(done) < 2:
                    for tp, recs in (await reader.getmany(timeout_ms=500)).items():
                        for rec in recs:
                            if tp == ev_tp:
                                self._rebuild_event(part, rec, committed)
                            else:
                                self._rebuild_outcome(part, rec)
                        if recs and recs[-1].offset + 1 >= ends[tp]:
                            done.add(tp)
                    for tp in (ev_tp, out_tp):
                        if tp not in done and await reader.position(tp) >= ends[tp]:
                            done.add(tp)  # trailing transaction markers have no record
            finally:
                await reader.stop()
        for a in part.states.values():
            self._arm_deadline(part, a)
        log.info("partition %d rebuilt: %d assessments, %d command ids, %d held events, committed offset %d",
                 partition, len(part.states), len(part.outcomes), len(part.held), committed)
        return part

    def _rebuild_event(self, part: _Partition, rec: ConsumerRecord[bytes, bytes], committed: int) -> None:
        try:
            ev = self._events.decode(rec.value, rec.headers)
        except CodecError as e:
            log.error("undecodable event at %s/%d: %s", rec.partition, rec.offset, e)
            return
        self.stats.rebuilt_events += 1
        raw = _header(rec.headers, COMMAND_OFFSET_HEADER)
        cmd_offset = int(raw) if raw is not None else None
        if ev.causation_id is not None:
            part.outcomes.setdefault(ev.causation_id, Outcome(
                ev.causation_id, ev.assessment_id, True, ev.recorded_at, cmd_offset if cmd_offset is not None else -1,
                version=ev.version, event_id=ev.event_id,
            ))
        if cmd_offset is not None and cmd_offset >= committed:
            part.held[cmd_offset] = ev
            return
        self._apply(part, ev)

    def _rebuild_outcome(self, part: _Partition, rec: ConsumerRecord[bytes, bytes]) -> None:
        try:
            o = self._outcomes.decode(rec.value, rec.headers)
        except CodecError as e:
            log.error("undecodable outcome at %s/%d: %s", rec.partition, rec.offset, e)
            return
        if not o.duplicate:
            part.outcomes[o.command_id] = o

    def _apply(self, part: _Partition, ev: Event) -> bool:
        cur = part.states.get(ev.assessment_id)
        if ev.version != (cur.version if cur else 0) + 1:
            log.warning("event %s v%d of %r does not follow v%s; not applied",
                        ev.event_id, ev.version, ev.assessment_id, cur.version if cur else 0)
            return False
        part.states[ev.assessment_id] = new = evolve(cur, ev)
        self._arm_deadline(part, new)
        return True

    def _arm_deadline(self, part: _Partition, a: Assessment) -> None:
        timeout = a.processing_timeout_ms or self.s.default_processing_timeout_ms
        if a.state is State.PROCESSING and timeout and a.started_at is not None:
            fires = a.started_at + timedelta(milliseconds=timeout)
            heapq.heappush(part.deadlines, (fires, a.assessment_id, a.started_at, timeout))

    # --- handling commands ---------------------------------------------------------------------

    async def _handle(
        self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> dict[TopicPartition, int]:
        """Handle one fetch (all its partitions together, so a fetch costs two produce round
        trips whatever the partition count); returns the offsets to commit, leaving out
        partitions that are no longer ours."""
        async with self._lock:
            assert self._producer is not None
            now = datetime.now(UTC)
            events: list[tuple[Event, int, int]] = []
            outcomes: list[tuple[Outcome, int]] = []
            dead: list[tuple[ConsumerRecord[bytes, bytes], str]] = []
            commit: dict[TopicPartition, int] = {}
            for tp, records in batches.items():
                part = self._parts.get(tp.partition)
                if part is None or not records:
                    continue  # revoked (or not rebuilt yet) since the fetch: the next owner handles them
                for rec in records:
                    self._handle_one(part, rec, now, events, outcomes, dead)
                commit[tp] = records[-1].offset + 1
            # Events first, all acknowledged, then outcomes (rejections and answers to re-sent
            # commands only): see point 2 of the module docstring.
            with translate_kafka_errors("appending events"):
                sent = []
                for rec, reason in dead:
                    # Undecodable commands are kept, with the reason, before their offset is committed.
                    headers = [*rec.headers, ("dlq-reason", reason.encode()[:1000]),
                               ("dlq-source", f"{rec.topic}/{rec.partition}/{rec.offset}".encode())]
                    sent.append(await self._producer.send(
                        self.s.commands_topic + ".dlq", rec.value, key=rec.key, headers=headers))
                for ev, partition, cmd_offset in events:
                    value, headers = self._events.encode(ev)
                    headers.append((COMMAND_OFFSET_HEADER, str(cmd_offset).encode()))
                    sent.append(await self._producer.send(
                        self.s.events_topic, value, key=ev.assessment_id.encode(), partition=partition,
                        headers=headers, timestamp_ms=int(ev.recorded_at.timestamp() * 1000),
                    ))
                await asyncio.gather(*sent)
                sent = []  # usually stays empty: most batches cost one produce round trip
                for o, partition in outcomes:
                    value, headers = self._outcomes.encode(o)
                    sent.append(await self._producer.send(
                        self.s.outcomes_topic, value, key=o.assessment_id.encode(), partition=partition,
                        headers=headers,
                    ))
                await asyncio.gather(*sent)
            return commit

    def _handle_one(self, part: _Partition, rec: ConsumerRecord[bytes, bytes], now: datetime,
                    events: list[tuple[Event, int, int]], outcomes: list[tuple[Outcome, int]],
                    dead: list[tuple[ConsumerRecord[bytes, bytes], str]]) -> None:
        try:
            env = self._commands.decode(rec.value, rec.headers)
        except CodecError as e:
            self.stats.dead_lettered += 1
            log.error("dead-lettering command at %s/%d: %s", rec.partition, rec.offset, e)
            dead.append((rec, str(e)))
            return
        cmd = env.command
        held = part.held.pop(rec.offset, None)
        if held is not None:
            # Accepted before the last handover: apply its event, append nothing (point 3).
            self.stats.replayed += 1
            self._apply(part, held)
            part.outcomes.setdefault(cmd.command_id, Outcome(
                cmd.command_id, cmd.assessment_id, True, now, rec.offset, version=held.version,
                event_id=held.event_id))
            return
        prior = part.outcomes.get(cmd.command_id)
        if prior is not None:
            if prior.command_offset != rec.offset:  # a re-sent command, not our own replay
                self.stats.duplicates += 1
                outcomes.append((Outcome(
                    prior.command_id, prior.assessment_id, prior.accepted, now, rec.offset, prior.version,
                    prior.event_id, prior.error_type, prior.error_message, prior.error_details, duplicate=True,
                ), rec.partition))
            return
        try:
            ev = decide(part.states.get(cmd.assessment_id), cmd, now, source=env.source, occurred_at=env.occurred_at,
                        max_json_bytes=self.s.max_request_bytes, default_max_retries=self.s.default_max_retries)
        except StoreUsageError as e:
            self.stats.rejected += 1
            o = Outcome(cmd.command_id, cmd.assessment_id, False, now, rec.offset,
                        error_type=type(e).__name__, error_message=str(e), error_details=e.details())
            part.outcomes[cmd.command_id] = o
            outcomes.append((o, rec.partition))
        else:
            # Accepted: the event itself is the outcome (its causation_id is the command id and the
            # projector derives the outcome row from it), so no outcome record is written.
            self.stats.accepted += 1
            if isinstance(cmd, ExpireDeadline):
                self.stats.deadlines_fired += 1
            self._apply(part, ev)
            events.append((ev, rec.partition, rec.offset))
            part.outcomes[cmd.command_id] = Outcome(cmd.command_id, cmd.assessment_id, True, now, rec.offset,
                                                    version=ev.version, event_id=ev.event_id)


    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        # Outside the lock: a commit can wait for a rebalance, which waits for the lock.
        assert self._consumer is not None
        try:
            await self._consumer.commit(offsets)
        except Exception as e:  # noqa: BLE001 - safe to lose: re-consumed commands replay (point 3)
            log.warning("commit of %s failed (%s); the next owner replays from the last commit", offsets, e)

    # --- deadlines ---------------------------------------------------------------------------

    async def _fire_deadlines(self) -> None:
        now = datetime.now(UTC)
        due: list[ExpireDeadline] = []
        async with self._lock:
            for part in self._parts.values():
                while part.deadlines and part.deadlines[0][0] <= now:
                    _, aid, started_at, timeout = heapq.heappop(part.deadlines)
                    a = part.states.get(aid)
                    if a is not None and a.state is State.PROCESSING and a.started_at == started_at:
                        due.append(ExpireDeadline(
                            assessment_id=aid, started_at=started_at, timeout_ms=timeout,
                            # Deterministic id: firing twice (e.g. after a restart) is one command.
                            command_id=f"deadline:{aid}:{started_at.isoformat()}",
                        ))
        if not due:
            return
        assert self._producer is not None
        with translate_kafka_errors("issuing deadline commands"):
            for cmd in due:
                value, headers = self._commands.encode(CommandEnvelope(cmd, now, EventSource.STORE))
                await self._producer.send_and_wait(self.s.commands_topic, value, key=cmd.assessment_id.encode(),
                                                   headers=headers)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: CommandProcessor) -> None:
        self.p = processor

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.p._lock:  # waits for the batch in flight: it completes before handover
            for tp in revoked:
                self.p._parts.pop(tp.partition, None)
                self.p._pending.pop(tp.partition, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        consumer = self.p._consumer
        assert consumer is not None
        async with self.p._lock:
            self.p._generation += 1
            for tp in assigned:
                self.p._parts.pop(tp.partition, None)
                self.p._pending[tp.partition] = self.p._generation
            consumer.pause(*assigned)

