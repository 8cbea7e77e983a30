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
   answer equals the first. Handling resumes at ``c`` (an explicit seek), whatever was fetched.
4. A command id seen before (from the outcome records and from the events' causation ids) is
   answered with its original outcome, an outcome record marked ``duplicate``; no event.

Fencing (a *zombie*: a processor that stalls past the session timeout, e.g. a GC-like pause or
SIGSTOP, loses its partitions to another member, then wakes with commands in hand and stale
states, and keeps appending; without a fence the log held two events of one version for one
assessment). The rule readers apply is in ``streams/_fence.py``; the writer's side:

5. Taking partition *p* over (``_rebuild``), in this order: (a) fold the events and outcomes
   partitions to their current end, honouring the fences already on them; (b) *reserve* an epoch
   ``e`` = 1 + the highest of every fence on the log and the epoch recorded in the metadata of
   the group's committed offset of command partition *p*, by committing that offset again with
   ``fence-epoch=e`` as metadata: the group coordinator refuses a commit from a member of an old
   generation, so a zombie never gets an epoch, and a later owner reads ``e`` back in its own (b)
   and goes above it (the coordinator orders that commit before the later generation begins);
   (c) append a fence record with ``e`` to partition *p* of the events and of the outcomes topic;
   (d) fold what an earlier owner wrote between (a) and the fences (readers accept it: it
   precedes them), up to and including the fences. Then handle commands.
6. Every event and outcome record carries ``writer-epoch: e``. A reader ignores a record whose
   epoch is below the fence in force before it (kept as a ``fenced`` anomaly), so whatever a
   zombie appends after the new owner's fence never reaches a reader, and the new owner's state
   (folded up to its own fence) is exactly what every reader folds.
7. The zombie stops writing: its next commit is refused (old generation), upon which it drops all
   its states and rebuilds (5) whatever the group still gives it. A batch is committed only if no
   revocation happened since it was handled, and a revocation waits for the commit in flight, so
   a batch handled in one generation is never committed in a later one (where the coordinator
   would accept it although its events may have been fenced). Every commit's metadata carries the
   partition's epoch, so the reservation survives. Records a zombie wrote *before* the new
   owner's fence are legitimate (the new owner folds them in (a) or (d)); its uncommitted commands
   are consumed again by the new owner (point 3).

Why an epoch fence and not Kafka transactions (measured with ``python -m bench.fence``, one batch
of one command, the variants in turns in one run; ratios to the unfenced write path), on a shared
2-core machine, 300 batches per variant: unfenced p50 3.78 ms / p95 11.34 ms; epoch fence 3.70 / 10.44 ms (ratios 0.98 / 0.92: noise); one
transaction per batch 13.70 / 117.14 ms, mean 26.3 ms (ratios 3.63 / 10.33); the fence's takeover,
once per partition assignment, 6.17 / 16.07 ms.
A transaction (begin + produce + send_offsets_to_transaction + commit, ~26 ms with aiokafka 0.14 on
the local Kafka 4.3 broker even with retry_backoff_ms=2, because of the CONCURRENT_TRANSACTIONS
back-off between consecutive transactions) alone exceeds the 20 ms p95 command latency budget,
even amortized per batch at low rates, where a batch is one command. The epoch fence costs one
header per record and a few bytes of commit metadata per batch; its fixed cost (one commit and two
fence records) is paid once per partition assignment. What it does not cover: a processor of a
release without fencing writes no epoch, and its records are accepted (upgrade all processors
together); records written to the log by other means (tests' ``produce_lifecycles``) carry none.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from assessment_store.core import (
    Assessment,
    AsyncLifecycle,
    CodecError,
    CommandEnvelope,
    Event,
    EventSource,
    ExpireDeadline,
    FencedOut,
    Histogram,
    KafkaUnavailable,
    MetricFamily,
    Outcome,
    Settings,
    StackError,
    State,
    StoreUsageError,
    UnresolvableSchema,
    counter,
    counter_by,
    decide,
    evolve,
    histogram,
)
from assessment_store.schemas import CommandCodec, EventCodec, OutcomeCodec

from ._fence import EPOCH_HEADER, LogFence, Verdict, fence_headers, fence_metadata, metadata_epoch
from ._schema_topic import PartitionStops, SchemaResolver
from ._kafka import (
    committed_with_metadata,
    ensure_topics,
    idempotent_producer,
    kafka_client_options,
    publish_schemas,
    partition_counts,
    translate_kafka_errors,
)

__all__ = ["COMMAND_OFFSET_HEADER", "CommandProcessor", "ProcessorStats"]

log = logging.getLogger("assessment_store.processor")

COMMAND_OFFSET_HEADER = "command-offset"
_SCHEMA_RETRY_S = 5.0
"""how long a partition stopped at an unresolvable record waits before it is read again"""


@dataclass
class ProcessorStats:
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    replayed: int = 0
    dead_lettered: int = 0
    deadlines_fired: int = 0
    rebuilt_events: int = 0
    fences_written: int = 0
    fenced_ignored: int = 0
    """records of a fenced writer (a zombie's) met while rebuilding: never applied"""
    commits_refused: int = 0
    """batch commits the group refused (this member had been rebalanced away): its state is rebuilt"""
    unresolvable: int = 0
    """stops at a record whose writer schema cannot be resolved (a command, or an event or outcome met
    while rebuilding): the partition waits there, nothing is skipped or dead-lettered"""
    rejected_by_type: Counter[str] = field(default_factory=Counter)
    """rejections per error type (``InvalidTransition``, ...); their sum is ``rejected``"""
    command_to_event: Histogram = field(default_factory=Histogram)
    """seconds from a command record's timestamp to its event's acknowledgement (accepted commands)"""

    def metric_families(self) -> list[MetricFamily]:
        """The Prometheus view of these counters (read at each scrape; docs/monitoring.md, "Metrics")."""
        p = "assessment_store_processor_"
        return [
            counter(p + "commands_accepted_total", "Commands accepted (an event appended)", self.accepted),
            counter_by(p + "commands_rejected_total", "Commands rejected, by error type", ["error_type"],
                       self.rejected_by_type),
            counter(p + "commands_duplicate_total", "Re-sent commands answered with their original outcome",
                    self.duplicates),
            counter(p + "commands_replayed_total", "Commands re-consumed after a handover whose event was already "
                    "appended", self.replayed),
            counter(p + "commands_dead_lettered_total", "Undecodable commands sent to the dead-letter topic",
                    self.dead_lettered),
            counter(p + "deadlines_fired_total", "Processing deadlines expired", self.deadlines_fired),
            counter(p + "rebuilt_events_total", "Events folded while taking partitions over", self.rebuilt_events),
            counter(p + "fences_written_total", "Fence records written", self.fences_written),
            counter(p + "fenced_records_ignored_total", "Records of a fenced writer met while rebuilding",
                    self.fenced_ignored),
            counter(p + "commits_refused_total", "Batch commits the group refused", self.commits_refused),
            counter(p + "unresolvable_schema_total", "Partition stops at a record whose writer schema is unresolvable",
                    self.unresolvable),
            histogram(p + "command_to_event_seconds", "Command record timestamp to its event acknowledged",
                      self.command_to_event),
        ]


@dataclass
class _Partition:
    """The processor's state for one owned partition."""

    epoch: int = 0
    """this owner's fence epoch for the partition: the writer-epoch of every record it writes"""
    resume_at: int = 0
    """the command offset handling resumes from (the group's committed offset when rebuilt)"""
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

    def __init__(self, settings: Settings, *, stats: ProcessorStats | None = None) -> None:
        """``stats``: counters to continue (a process keeps one across supervised restarts, so its
        /metrics counters never go back)."""
        self.settings = settings
        self.stats = stats if stats is not None else ProcessorStats()
        self._commands = CommandCodec()
        self._events = EventCodec()
        self._outcomes = OutcomeCodec()
        # A record of a newer writer (a command from a newer client, an event or outcome of a newer
        # processor) is resolved through the schemas topic or the registry, never dead-lettered or
        # skipped; one that cannot be stops its partition until it can (PartitionStops).
        self._resolver = SchemaResolver(settings, "processor", [self._commands.avro, self._events.avro,
                                                                self._outcomes.avro], retry_s=_SCHEMA_RETRY_S)
        self._stops = PartitionStops("processor", self._resolver, _SCHEMA_RETRY_S)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._parts: dict[int, _Partition] = {}
        # Assigned partitions not yet rebuilt. They stay paused (nothing fetched) until the main
        # loop has rebuilt them: rebuilding inside the rebalance callback would stall the group
        # protocol for as long as the rebuild takes and get this member expelled.
        self._pending: dict[int, int] = {}
        self._generation = 0
        # Bumped (under the lock) by every revocation and by every refused commit: a batch handled
        # under an older value is never committed (see _commit).
        self._revocations = 0
        # The commit in flight, if any: a revocation waits for it, so the group's generation cannot
        # change between _commit's check and the commit request (see _commit).
        self._committing: asyncio.Future[None] | None = None
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        # Held while a batch is handled and while partitions are assigned or revoked, so a
        # rebalance never sees half a batch and a batch never runs on a half-built partition.
        self._lock = asyncio.Lock()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._consumer is not None:
            return
        s = self.settings
        await ensure_topics(s)
        counts = await partition_counts(s, [s.commands_topic, s.events_topic, s.outcomes_topic])
        if len(set(counts.values())) != 1:
            raise StackError(
                f"topics must have equal partition counts for single-writer routing, found {counts}"
            )
        producer = idempotent_producer(s, "processor")
        with translate_kafka_errors("starting the processor's producer"):
            await producer.start()
        try:
            # Before the first event or outcome: a reader meeting our fingerprint (or registry id) finds
            # the schema. The commands schema too: the processor writes the deadline commands.
            await publish_schemas(s, producer, {s.events_topic: self._events.avro, s.outcomes_topic: self._outcomes.avro,
                                                s.commands_topic: self._commands.avro})
        except BaseException:
            await producer.stop()
            raise
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
            await self._resume_stopped()
            with translate_kafka_errors("fetching commands"):
                batches = await self._consumer.getmany(timeout_ms=100)
            if batches:
                # Outside the lock: a look-up may take a registry round trip; it only adds writer schemas.
                await self._resolver.learn(batches)
                committed, token = await self._handle(batches)
                if committed:
                    await self._commit(committed, token)
            await self._fire_deadlines()

    # --- rebuilding a partition from the log --------------------------------------------------

    async def _resume_stopped(self) -> None:
        """Read partitions stopped at an unresolvable command again, from that command (the stop
        sought back to it), once their wait is over."""
        consumer = self._consumer
        assert consumer is not None
        due = self._stops.due()
        if due:
            async with self._lock:
                assigned = consumer.assignment()
                for tp in due:
                    if tp.partition in self._parts and tp in assigned:
                        consumer.resume(tp)

    async def _rebuild_pending(self) -> None:
        assert self._consumer is not None
        for partition, generation in list(self._pending.items()):
            cmd_tp = TopicPartition(self.settings.commands_topic, partition)
            if self._stops.waiting(cmd_tp):
                continue
            try:
                part = await self._rebuild(partition)
            except UnresolvableSchema as e:
                # An event or outcome of the partition that cannot be read: the state would miss it, so
                # the partition is not taken (it stays pending and paused) until the schema can be found.
                self.stats.unresolvable += 1
                self._stops.stop(cmd_tp, e)
                continue
            except FencedOut as e:
                # The group moved on (a rebalance is under way): not ours to write. The partition
                # stays paused; the rebalance's assignment puts it back in _pending if it is ours.
                log.warning("partition %d: %s; not taking it until the group assigns it again", partition, e)
                async with self._lock:
                    if self._pending.get(partition) == generation:
                        del self._pending[partition]
                continue
            async with self._lock:
                # Installed only if no rebalance happened meanwhile (else it is rebuilt again).
                if self._pending.get(partition) == generation:
                    del self._pending[partition]
                    self._parts[partition] = part
                    tp = TopicPartition(self.settings.commands_topic, partition)
                    # Resume right after the last committed command, whatever was fetched before
                    # (after a refused commit, the position is past commands whose output was fenced).
                    self._consumer.seek(tp, part.resume_at)
                    self._consumer.resume(tp)

    async def _rebuild(self, partition: int) -> _Partition:
        """Take partition *p* over (module docstring, point 3 and "Fencing"): fold the log, reserve
        an epoch above every earlier owner's, fence the events and outcomes partitions, fold what
        landed before the fences. Raises ``FencedOut`` when the group refuses the reservation."""
        s = self.settings
        assert self._consumer is not None and self._producer is not None
        cmd_tp = TopicPartition(s.commands_topic, partition)
        committed, metadata = await committed_with_metadata(self._consumer, cmd_tp)
        if committed is None:
            with translate_kafka_errors(f"reading the first offset of {cmd_tp}"):
                committed = (await self._consumer.beginning_offsets([cmd_tp]))[cmd_tp]
        part = _Partition(resume_at=committed)
        fence = LogFence()
        reader = AIOKafkaConsumer(
            **kafka_client_options(s, "processor"), enable_auto_commit=False, isolation_level="read_committed",
            group_id=None, auto_offset_reset="earliest",
        )
        ev_tp, out_tp = TopicPartition(s.events_topic, partition), TopicPartition(s.outcomes_topic, partition)
        with translate_kafka_errors(f"rebuilding partition {partition}"):
            await reader.start()
            try:
                reader.assign([ev_tp, out_tp])
                await reader.seek_to_beginning(ev_tp, out_tp)
                # 1. Everything on the log so far, honouring the fences on it.
                await self._read_log(reader, part, fence, await reader.end_offsets([ev_tp, out_tp]), committed)
                # 2. Reserve an epoch above every fence on the log and every epoch the group's
                # metadata says was reserved before. The reservation is an offset commit, which the
                # group coordinator refuses to a member of an old generation: of two processors that
                # both believe they own p, only the current one gets an epoch, and any later owner
                # reads it back here and goes above it. (The log's fences cover a group that was
                # deleted and recreated: its metadata starts again at 0, its fences remain.)
                epoch = max(metadata_epoch(metadata), fence.current(ev_tp), fence.current(out_tp)) + 1
                with translate_kafka_errors(f"reserving fence epoch {epoch} of partition {partition}"):
                    # A refusal (the group rebalanced) is FencedOut, raised through to _rebuild_pending.
                    await self._consumer.commit({cmd_tp: OffsetAndMetadata(committed, fence_metadata(epoch))})
                # 3. The fences: from here on, a reader ignores whatever an earlier owner writes.
                value = b""
                sent = await asyncio.gather(*(self._producer.send_and_wait(
                    tp.topic, value, partition=partition, headers=fence_headers(epoch, self._owner))
                    for tp in (ev_tp, out_tp)))
                self.stats.fences_written += 2
                # 4. What an earlier owner wrote between step 1 and our fences is on the log (readers
                # accept it): fold it too, up to and including our own fences.
                await self._read_log(reader, part, fence, {ev_tp: sent[0].offset + 1, out_tp: sent[1].offset + 1},
                                     committed)
            finally:
                await reader.stop()
        part.epoch = epoch
        for a in part.states.values():
            self._arm_deadline(part, a)
        log.info("partition %d rebuilt: %d assessments, %d command ids, %d held events, committed offset %d, "
                 "fence epoch %d at events offset %d, %d fenced records ignored", partition, len(part.states),
                 len(part.outcomes), len(part.held), committed, epoch, sent[0].offset, fence.fenced)
        return part

    async def _read_log(self, reader: AIOKafkaConsumer, part: _Partition, fence: LogFence,
                        targets: dict[TopicPartition, int], committed: int) -> None:
        """Fold the events and outcomes of one partition from the reader's position up to
        ``targets`` (exclusive, never beyond), skipping fence records and fenced writes."""
        ev_topic = self.settings.events_topic
        done = {tp for tp, end in targets.items() if await reader.position(tp) >= end}
        while len(done) < len(targets):
            fetched = await reader.getmany(*[tp for tp in targets if tp not in done], timeout_ms=500)
            await self._resolver.learn(fetched)
            for tp, recs in fetched.items():
                for rec in recs:
                    if rec.offset >= targets[tp]:
                        reader.seek(tp, targets[tp])  # fetched past the target: the next read starts there
                        break
                    verdict, epoch = fence.judge(tp, rec.headers)
                    if verdict is Verdict.FENCED:
                        self.stats.fenced_ignored += 1  # logged once per rebuild (see _rebuild)
                        if fence.fenced == 1:
                            log.warning("partition %d: ignoring %s/%d (epoch %s) and what a fenced writer wrote after "
                                        "it: written after the fence of epoch %d (a processor that had lost the "
                                        "partition)", rec.partition, rec.topic, rec.offset, epoch, fence.current(tp))
                    elif verdict is Verdict.ACCEPTED:
                        if tp.topic == ev_topic:
                            self._rebuild_event(part, rec, committed)
                        else:
                            self._rebuild_outcome(part, rec)
            for tp in targets:
                if tp not in done and await reader.position(tp) >= targets[tp]:
                    done.add(tp)  # also past trailing transaction markers, which have no record

    def _rebuild_event(self, part: _Partition, rec: ConsumerRecord[bytes, bytes], committed: int) -> None:
        try:
            ev = self._events.decode(rec.value, rec.headers)
        except UnresolvableSchema as e:
            raise e.at(rec.topic, rec.partition, rec.offset) from None  # never skipped: see _rebuild_pending
        except CodecError as e:
            log.error("undecodable event at %s/%d: %s", rec.partition, rec.offset, e)
            return
        self.stats.rebuilt_events += 1
        raw = _header(rec.headers, COMMAND_OFFSET_HEADER)
        cmd_offset = int(raw) if raw is not None else None
        if ev.causation_id is not None:
            part.outcomes.setdefault(ev.causation_id, Outcome(
                command_id=ev.causation_id, assessment_id=ev.assessment_id, accepted=True, processed_at=ev.recorded_at,
                command_offset=cmd_offset if cmd_offset is not None else -1, version=ev.version, event_id=ev.event_id,
            ))
        if cmd_offset is not None and cmd_offset >= committed:
            part.held[cmd_offset] = ev
            return
        self._apply(part, ev)

    def _rebuild_outcome(self, part: _Partition, rec: ConsumerRecord[bytes, bytes]) -> None:
        try:
            o = self._outcomes.decode(rec.value, rec.headers)
        except UnresolvableSchema as e:
            raise e.at(rec.topic, rec.partition, rec.offset) from None
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
        timeout = a.processing_timeout_ms or self.settings.default_processing_timeout_ms
        if a.state is State.PROCESSING and timeout and a.started_at is not None:
            fires = a.started_at + timedelta(milliseconds=timeout)
            heapq.heappush(part.deadlines, (fires, a.assessment_id, a.started_at, timeout))

    # --- handling commands ---------------------------------------------------------------------

    async def _handle(
        self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> tuple[dict[TopicPartition, int], int]:
        """Handle one fetch (all its partitions together, so a fetch costs two produce round
        trips whatever the partition count); returns the offsets to commit, leaving out
        partitions that are no longer ours, and the revocation count they were handled under."""
        async with self._lock:
            token = self._revocations
            assert self._producer is not None
            now = datetime.now(UTC)
            events: list[tuple[Event, int, int, int]] = []
            outcomes: list[tuple[Outcome, int]] = []
            dead: list[tuple[ConsumerRecord[bytes, bytes], str]] = []
            commit: dict[TopicPartition, int] = {}
            stopped: dict[TopicPartition, UnresolvableSchema] = {}
            for tp, records in batches.items():
                part = self._parts.get(tp.partition)
                if part is None or not records:
                    continue  # revoked (or not rebuilt yet) since the fetch: the next owner handles them
                for rec in records:
                    try:
                        self._handle_one(part, rec, now, events, outcomes, dead)
                    except UnresolvableSchema as e:
                        # Ordering: the partition's progress ends before this command (nothing after it
                        # is handled; its offset is what gets committed), and it is read again from it.
                        stopped[tp] = e.at(rec.topic, rec.partition, rec.offset)
                        commit[tp] = rec.offset
                        break
                else:
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
                        self.settings.commands_topic + ".dlq", rec.value, key=rec.key, headers=headers))
                for ev, partition, cmd_offset, _ in events:
                    value, headers = self._events.encode(ev)
                    headers.append((COMMAND_OFFSET_HEADER, str(cmd_offset).encode()))
                    # Our epoch: readers ignore this record if a later owner's fence precedes it.
                    headers.append((EPOCH_HEADER, str(self._parts[partition].epoch).encode()))
                    sent.append(await self._producer.send(
                        self.settings.events_topic, value, key=ev.assessment_id.encode(), partition=partition,
                        headers=headers, timestamp_ms=int(ev.recorded_at.timestamp() * 1000),
                    ))
                await asyncio.gather(*sent)
                if events:
                    # Timed per record (the latency is per command) but with one clock read per batch.
                    acked, observe = time.time(), self.stats.command_to_event.observe
                    for _, _, _, stamp_ms in events:
                        observe(max(0.0, acked - stamp_ms / 1000))
                sent = []  # usually stays empty: most batches cost one produce round trip
                for o, partition in outcomes:
                    value, headers = self._outcomes.encode(o)
                    headers.append((EPOCH_HEADER, str(self._parts[partition].epoch).encode()))
                    sent.append(await self._producer.send(
                        self.settings.outcomes_topic, value, key=o.assessment_id.encode(), partition=partition,
                        headers=headers,
                    ))
                await asyncio.gather(*sent)
            assert self._consumer is not None
            for tp, unresolved in stopped.items():
                self.stats.unresolvable += 1
                self._stops.stop_consumer(self._consumer, tp, unresolved)
            return commit, token

    def _handle_one(self, part: _Partition, rec: ConsumerRecord[bytes, bytes], now: datetime,
                    events: list[tuple[Event, int, int, int]], outcomes: list[tuple[Outcome, int]],
                    dead: list[tuple[ConsumerRecord[bytes, bytes], str]]) -> None:
        try:
            env = self._commands.decode(rec.value, rec.headers)
        except UnresolvableSchema:
            raise  # not corrupt: a schema not found (yet); the partition stops here (_handle)
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
                command_id=cmd.command_id, assessment_id=cmd.assessment_id, accepted=True, processed_at=now,
                command_offset=rec.offset, version=held.version, event_id=held.event_id))
            return
        prior = part.outcomes.get(cmd.command_id)
        if prior is not None:
            if prior.command_offset != rec.offset:  # a re-sent command, not our own replay
                self.stats.duplicates += 1
                outcomes.append((
                    dataclasses.replace(prior, processed_at=now, command_offset=rec.offset, duplicate=True),
                    rec.partition,
                ))
            return
        try:
            ev = decide(part.states.get(cmd.assessment_id), cmd, now, source=env.source, occurred_at=env.occurred_at,
                        max_json_bytes=self.settings.max_request_bytes, default_max_retries=self.settings.default_max_retries)
        except StoreUsageError as e:
            self.stats.rejected += 1
            self.stats.rejected_by_type[type(e).__name__] += 1
            o = Outcome(command_id=cmd.command_id, assessment_id=cmd.assessment_id, accepted=False, processed_at=now,
                        command_offset=rec.offset, error_type=type(e).__name__, error_message=str(e),
                        error_details=e.details())
            part.outcomes[cmd.command_id] = o
            outcomes.append((o, rec.partition))
        else:
            # Accepted: the event itself is the outcome (its causation_id is the command id and the
            # projector derives the outcome row from it), so no outcome record is written.
            self.stats.accepted += 1
            if isinstance(cmd, ExpireDeadline):
                self.stats.deadlines_fired += 1
            self._apply(part, ev)
            events.append((ev, rec.partition, rec.offset, rec.timestamp))
            part.outcomes[cmd.command_id] = Outcome(
                command_id=cmd.command_id, assessment_id=cmd.assessment_id, accepted=True, processed_at=now,
                command_offset=rec.offset, version=ev.version, event_id=ev.event_id)


    async def _commit(self, offsets: dict[TopicPartition, int], token: int) -> None:
        """Commit a handled batch's command offsets, only if this member still owns its partitions.

        Ordering: the check and the start of the commit happen under the lock, and a revocation
        waits for the commit in flight (``_Rebalance``), so a batch handled in one generation of the
        group is never committed in a later one (where the coordinator would accept it while a
        later owner's fence has made the batch's events void). A refused commit means the group
        moved on: this member may have written after a later owner's fence (a zombie), so its
        in-memory state is dropped and every partition it still holds is rebuilt from the log."""
        consumer = self._consumer
        assert consumer is not None
        async with self._lock:
            if token != self._revocations:
                log.info("not committing %s: partitions were revoked since the batch was handled", offsets)
                return
            # The metadata keeps each partition's epoch reservation (see _rebuild).
            request = {tp: OffsetAndMetadata(o, fence_metadata(self._parts[tp.partition].epoch))
                       for tp, o in offsets.items() if tp.partition in self._parts}
            committing = self._committing = asyncio.ensure_future(consumer.commit(request))
        try:
            with translate_kafka_errors(f"committing command offsets {offsets}"):
                await committing
        except (FencedOut, KafkaUnavailable) as e:
            # Safe to lose (re-consumed commands replay, point 3), but our state may be stale.
            self.stats.commits_refused += 1
            log.warning("commit of %s failed (%s); dropping this processor's state, rebuilding its partitions from "
                        "the log (their next owner, or this one again, replays from the last commit)", offsets, e)
            await self._forget_all()
        finally:
            if self._committing is committing:
                self._committing = None

    async def _forget_all(self) -> None:
        """Stop writing: every owned partition goes back to _pending (paused), to be rebuilt (and
        fenced again) from the log, unless the rebalance that follows takes it away."""
        consumer = self._consumer
        assert consumer is not None
        async with self._lock:
            self._revocations += 1
            self._generation += 1
            assigned = consumer.assignment()
            for partition in list(self._parts) + list(self._pending):
                tp = TopicPartition(self.settings.commands_topic, partition)
                self._parts.pop(partition, None)
                self._pending[partition] = self._generation
                if tp in assigned:
                    consumer.pause(tp)

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
                await self._producer.send_and_wait(self.settings.commands_topic, value, key=cmd.assessment_id.encode(),
                                                   headers=headers)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: CommandProcessor) -> None:
        self.processor = processor

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.processor._lock:  # waits for the batch in flight: it completes before handover
            self.processor._revocations += 1  # no batch handled before this point is committed after it
            committing = self.processor._committing
            self.processor._stops.forget(revoked)
            for tp in revoked:
                self.processor._parts.pop(tp.partition, None)
                self.processor._pending.pop(tp.partition, None)
        if committing is not None:
            # Ordering: the group's next generation starts only after this listener returns, so
            # waiting here keeps a commit that passed _commit's check in this generation (where the
            # coordinator judges it). Its outcome is _commit's to handle.
            await asyncio.wait([committing], timeout=self.processor.settings.consumer_session_timeout_ms / 1000)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        consumer = self.processor._consumer
        assert consumer is not None
        async with self.processor._lock:
            self.processor._generation += 1
            for tp in assigned:
                self.processor._parts.pop(tp.partition, None)
                self.processor._pending[tp.partition] = self.processor._generation
            consumer.pause(*assigned)

