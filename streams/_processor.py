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
   With snapshots (``streams/_snapshot.py``), the fold of the events of commands below ``c`` starts
   from the last checkpoint's state instead of offset 0: the checkpoint covers only committed
   commands and is written only when no held-back event is pending, so the state it loads is the
   fold of exactly the events a full rebuild applies up to the checkpoint's offsets, and the tail
   after them is folded and held back by the same rule as above. Events at or below an
   assessment's loaded version are already in it (a snapshot write after the checkpoint) and are
   skipped, as a full rebuild would not apply them twice either.
4. A command id seen before (from the outcome records and from the events' causation ids) is
   answered with its original outcome, an outcome record marked ``duplicate``; no event. The
   record is a window: the newest ``processor_idempotency_max_ids`` ids per partition, none older
   than ``processor_idempotency_window_s``, kept in the snapshot. An id past the window is decided
   again as a new command (docs/architecture.md, "Idempotency window"). The outcomes of commands at
   or after ``c`` are never dropped at a takeover, so a re-consumed command still finds its own.

Fencing (a *zombie*: a processor that stalls past the session timeout, e.g. a GC-like pause or
SIGSTOP, loses its partitions to another member, then wakes with commands in hand and stale
states, and keeps appending; without a fence the log held two events of one version for one
assessment). The rule readers apply is in ``streams/_fence.py``; the writer's side:

5. Taking partition *p* over (``_rebuild``), in this order: (a) fold the events and outcomes
   partitions to their current end (from the snapshot's checkpoint, under the fence in force
   there: its writer's epoch), honouring the fences already on them; (b) *reserve* an epoch
   ``e`` = 1 + the highest of every fence on the log and the epoch recorded in the metadata of
   the group's committed offset of command partition *p*, by committing that offset again with
   ``fence-epoch=e`` as metadata: the group coordinator refuses a commit from a member of an old
   generation, so a zombie never gets an epoch, and a later owner reads ``e`` back in its own (b)
   and goes above it (the coordinator orders that commit before the later generation begins);
   (c) append a fence record with ``e`` to partition *p* of the events and of the outcomes topic
   (and of the state topic, where it fences an earlier owner's late snapshot writes);
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
import gc
import heapq
import itertools
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, RecordMetadata

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
    slot_constructor,
)
from assessment_store.schemas import CommandCodec, EventCodec, OutcomeCodec

from ._commands import REPLY_HEADER
from ._fence import EPOCH_HEADER, LogFence, Verdict, fence_headers, fence_metadata, header, metadata_epoch
from ._schema_topic import PartitionStops, SchemaResolver
from ._snapshot import (
    Checkpoint,
    LoadedSnapshot,
    Row,
    SnapshotScan,
    checkpoint_key,
    chunk_key,
    encode_checkpoint,
    encode_chunk,
    encode_state,
    encode_terminals,
    fence_key,
    marker_state,
    read_snapshot,
    row_outcome,
    row_time,
    scan_partition,
    state_key,
    state_topic,
    terminal_chunk_key,
)
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

_EVENT_BATCH_BYTES = 512 * 1024
"""The processor's produce batches: a fetch of commands becomes a few hundred events per partition
at once, sent in one request rather than one round trip per 16 KiB (aiokafka's default); below the
topics' 1 MiB record-batch limit."""

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
    event_batches: int = 0
    """record batches of events appended: one per partition per fetch handled, more when a partition's
    events of one fetch overflow a batch (512 KiB)"""
    command_to_event: Histogram = field(default_factory=Histogram)
    """seconds from a command record's timestamp to its event's acknowledgement (accepted commands)"""
    rebuilds: Counter[str] = field(default_factory=Counter)
    """partition takeovers by where the state came from: ``snapshot`` (loaded, then the log after
    its checkpoint) or ``full`` (the whole log)"""
    rebuild_fallbacks: Counter[str] = field(default_factory=Counter)
    """takeovers that could not use the snapshot, by reason (``no_checkpoint``, ``undecodable``,
    ``fenced_writer``, ``beyond_log_end``)"""
    rebuild_records_read: int = 0
    """records read while taking partitions over (state topic, events, outcomes)"""
    snapshot_records_loaded: int = 0
    snapshot_writes: int = 0
    """snapshot writes (each: the changed assessments, an idempotency chunk, maybe a checkpoint)"""
    snapshot_records_written: int = 0
    snapshot_bytes_written: int = 0
    snapshot_write_seconds: Histogram = field(default_factory=Histogram)

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
            counter(p + "event_batches_total", "Record batches of events appended (a partition's events of one fetch "
                    "each, more when they overflow 512 KiB)", self.event_batches),
            histogram(p + "command_to_event_seconds", "Command record timestamp to its event acknowledged",
                      self.command_to_event),
            counter_by(p + "rebuilds_total", "Partition takeovers, by the source of the state (snapshot, full)",
                       ["source"], self.rebuilds),
            counter_by(p + "rebuild_fallbacks_total", "Takeovers that could not use the snapshot, by reason",
                       ["reason"], self.rebuild_fallbacks),
            counter(p + "rebuild_records_read_total", "Records read while taking partitions over",
                    self.rebuild_records_read),
            counter(p + "snapshot_records_loaded_total", "State topic records read while taking partitions over",
                    self.snapshot_records_loaded),
            counter(p + "snapshot_writes_total", "Snapshot writes (changed assessments, idempotency chunk, checkpoint)",
                    self.snapshot_writes),
            counter(p + "snapshot_records_written_total", "Records written to the state topic",
                    self.snapshot_records_written),
            counter(p + "snapshot_bytes_written_total", "Bytes (keys and values) written to the state topic",
                    self.snapshot_bytes_written),
            histogram(p + "snapshot_write_seconds", "Duration of one snapshot write, acknowledgements included",
                      self.snapshot_write_seconds),
        ]


@dataclass
class _Partition:
    """The processor's state for one owned partition."""

    epoch: int = 0
    """this owner's fence epoch for the partition: the writer-epoch of every record it writes"""
    resume_at: int = 0
    """the command offset handling resumes from (the group's committed offset when rebuilt)"""
    states: dict[str, Assessment] = field(default_factory=dict)
    """the live assessments (not COMPLETED nor CANCELLED)"""
    terminal: dict[str, tuple[State, int]] = field(default_factory=dict)
    """COMPLETED and CANCELLED assessments as (state, version): they accept no command, and ``decide``
    refuses one from these two alone (``marker_state``)"""
    outcomes: dict[str, Outcome | Row] = field(default_factory=dict)
    """the idempotency window: command id -> outcome (a snapshot's row until looked up), oldest first"""
    held: dict[int, Event] = field(default_factory=dict)
    """command offset -> event appended before the last handover, applied when re-consumed"""
    deadlines: list[tuple[datetime, str, datetime, int]] = field(default_factory=list)
    """heap of (fires_at, assessment_id, started_at, timeout_ms)"""
    source: str = "full"
    """where the takeover's state came from: ``snapshot`` or ``full``"""
    # --- the snapshot (streams/_snapshot.py) ---
    dirty: set[str] = field(default_factory=set)
    """assessments changed since their last snapshot write"""
    new_outcomes: list[Outcome] = field(default_factory=list)
    """outcomes remembered since the last idempotency chunk"""
    chunks: dict[int, float] = field(default_factory=dict)
    """idempotency chunks on the state topic: number -> timestamp of its newest outcome"""
    stale_chunks: list[int] = field(default_factory=list)
    """chunks to delete (tombstones): all their outcomes left the window"""
    next_chunk: int = 0
    terminal_chunks: dict[int, list[str]] = field(default_factory=dict)
    """terminal chunks on the state topic: number -> the finished assessments it holds"""
    next_terminal_chunk: int = 0
    stale_terminal_chunks: list[int] = field(default_factory=list)
    """terminal chunks of a snapshot a full rebuild replaced: deleted once its checkpoint is written"""
    state_records: set[str] = field(default_factory=set)
    """assessments with an ``a:`` record on the state topic (deleted once they are in a terminal chunk)"""
    events_next: int | None = None
    """end of the gapless prefix of the events partition folded into ``states`` (None: a record this
    processor did not write landed in it, so no checkpoint may go past it until the next takeover)"""
    outcomes_next: int | None = None
    checkpointed: tuple[int, int] | None = None
    """(events, outcomes) offsets of the last checkpoint written"""
    last_snapshot: float = float("-inf")
    """time.monotonic() of the last snapshot write"""


def _outcome_order(o: Outcome) -> tuple[datetime, int, str]:
    return o.processed_at, o.command_offset, o.command_id


def _outcome_time(o: Outcome | Row) -> float:
    return o.processed_at.timestamp() if isinstance(o, Outcome) else row_time(o)


_TRIM_COPY_AFTER = 4096
"""Ids forgotten at once past which ``_trim`` copies what stays rather than deleting in place."""

_CHUNK_OUTCOMES = 2000
"""Outcomes per idempotency chunk record (a few hundred kB, well under the broker's record limit)."""
_CHUNK_TERMINALS = 2000
"""Finished assessments per terminal chunk record (at most ~1.7 MB with 200-character ids of 4-byte
characters, under the state topic's 4 MB record limit; ~100 kB with ids of 40 ASCII characters)."""
_MAX_SMALL_TERMINAL_CHUNKS = 16
"""Terminal chunks under half full (one per snapshot write that finished assessments) kept before
they are merged: a load reads one record per chunk, so their number must not grow with uptime."""


_new_outcome = slot_constructor(Outcome)


def _newest_timestamp(outcomes: list[Outcome]) -> float:
    """The timestamp of the newest outcome: the newest instant, then one conversion, not one per
    outcome (a drain writes one outcome per command), as long as the times compare (aware ones:
    timestamp() keeps their order); naive and aware ones mixed are converted each."""
    try:
        return max(o.processed_at for o in outcomes).timestamp()
    except TypeError:
        return max(o.processed_at.timestamp() for o in outcomes)


_Appended = tuple[Event, int, int, int, bytes | None]
"""An accepted command's event to append: the event, its partition, the command's offset and
record timestamp, and the command's ``REPLY_HEADER`` value (copied onto the event)."""


def _reply_to(headers: tuple[tuple[str, bytes], ...] | list[tuple[str, bytes]]) -> bytes | None:
    """The command's reply channel, if it has one of a channel name's length: copied onto its event
    unread (the projector checks the name), so a header of any other size is not carried on."""
    value = header(headers, REPLY_HEADER)
    return value if value is not None and len(value) <= 63 else None


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
        topics = [s.commands_topic, s.events_topic, s.outcomes_topic]
        if s.processor_snapshots:
            topics.append(state_topic(s))  # partition p of it holds the state of command partition p
        counts = await partition_counts(s, topics)
        if len(set(counts.values())) != 1:
            raise StackError(
                f"topics must have equal partition counts for single-writer routing, found {counts}"
            )
        producer = idempotent_producer(s, "processor", max_batch_size=_EVENT_BATCH_BYTES)
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

    def folded_state(self) -> dict[str, Assessment | tuple[State, int]]:
        """Every assessment of the owned partitions as folded: live ones in full, COMPLETED and
        CANCELLED ones as (state, version). For comparing two rebuilds (tests, ``bench.restart``)."""
        out: dict[str, Assessment | tuple[State, int]] = {}
        for part in self._parts.values():
            out.update(part.states)
            out.update(part.terminal)
        return out

    def remembered_command_ids(self) -> set[str]:
        """The command ids in the idempotency window of the owned partitions."""
        return {cid for part in self._parts.values() for cid in part.outcomes}

    async def run(self, stop: asyncio.Event | None = None) -> None:
        await self.start()
        assert self._consumer is not None
        stop = stop or asyncio.Event()
        while not stop.is_set():
            await self._rebuild_pending()
            await self._resume_stopped()
            with translate_kafka_errors("fetching commands"):
                # No wait while partitions are still to be taken over: one is taken per turn.
                batches = await self._consumer.getmany(timeout_ms=0 if self._rebuild_due() else 100)
            if batches:
                # Outside the lock: a look-up may take a registry round trip; it only adds writer schemas.
                await self._resolver.learn(batches)
                committed, token = await self._handle(batches)
                if committed:
                    await self._commit(committed, token)
            # After the commit: a snapshot never holds a state of an uncommitted command.
            await self._write_snapshots()
            await self._fire_deadlines()
        # A clean stop leaves a checkpoint at the end: the next owner folds nothing after it.
        await self._write_snapshots(force=True)

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

    def _rebuild_due(self) -> bool:
        """Whether a partition is waiting to be taken over (and not stopped at an unresolvable schema)."""
        return any(not self._stops.waiting(TopicPartition(self.settings.commands_topic, p)) for p in self._pending)

    async def _rebuild_pending(self) -> None:
        """Take over the next pending partition. One per turn of the loop: the partitions already
        taken serve their commands between two takeovers, instead of waiting for all of them."""
        assert self._consumer is not None
        # One after the other: side by side (tried), full rebuilds of a long log starved the group
        # protocol and were taken away and redone (bench.restart: 12 takeovers for 6 partitions).
        for partition, generation in list(self._pending.items()):
            cmd_tp = TopicPartition(self.settings.commands_topic, partition)
            if self._stops.waiting(cmd_tp):
                continue
            # The collector off while a partition is loaded: a takeover allocates one object per
            # assessment and remembered command, and full collections walking the partitions loaded
            # before made each takeover slower than the last (read_snapshot of a 1M-event history:
            # 0.23 s for the first partition, 0.58 s for the sixth).
            gc.disable()
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
            finally:
                gc.enable()
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
            if not self._rebuild_due():
                # Every partition taken: the loaded state is long-lived, so it leaves the collector's
                # sight (a full collection walking it cost 0.4 s with a 1M-event history, a pause in
                # the middle of serving). Its objects are freed by reference counting when a partition
                # is revoked (states and rows hold no cycles); only cyclic garbage pending at this
                # instant is kept, so the young generations are collected first.
                gc.collect(1)
                gc.freeze()
            return

    async def _rebuild(self, partition: int) -> _Partition:
        """Take partition *p* over (module docstring, point 3 and "Fencing"): load the snapshot and
        fold the log after its checkpoint, or fold the whole log; reserve an epoch above every earlier
        owner's, fence the events, outcomes and state partitions, fold what landed before the fences.
        Raises ``FencedOut`` when the group refuses the reservation."""
        s = self.settings
        assert self._consumer is not None and self._producer is not None
        cmd_tp = TopicPartition(s.commands_topic, partition)
        committed, metadata = await committed_with_metadata(self._consumer, cmd_tp)
        if committed is None:
            with translate_kafka_errors(f"reading the first offset of {cmd_tp}"):
                committed = (await self._consumer.beginning_offsets([cmd_tp]))[cmd_tp]
        reader = AIOKafkaConsumer(
            **kafka_client_options(s, "processor"), enable_auto_commit=False, isolation_level="read_committed",
            group_id=None, auto_offset_reset="earliest",
            # A state partition is megabytes (idempotency chunks of ~200 kB each): read in 16 MiB
            # fetches, not the default 1 MiB ones.
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        ev_tp, out_tp = TopicPartition(s.events_topic, partition), TopicPartition(s.outcomes_topic, partition)
        st_tp = TopicPartition(state_topic(s), partition)
        state_epoch = 0
        with translate_kafka_errors(f"rebuilding partition {partition}"):
            await reader.start()
            try:
                loaded: LoadedSnapshot | None = None
                scan: SnapshotScan | None = None
                stale: list[int] = []
                reason = why = ""
                if s.processor_snapshots:
                    reader.assign([st_tp])
                    scan = await scan_partition(reader, st_tp, (await reader.end_offsets([st_tp]))[st_tp])
                    self.stats.rebuild_records_read += scan.records
                    self.stats.snapshot_records_loaded += scan.records
                    state_epoch = scan.fence.current(st_tp)
                    stale = scan.chunk_seqs
                    loaded, reason, why = read_snapshot(scan)
                reader.assign([ev_tp, out_tp])
                ends = await reader.end_offsets([ev_tp, out_tp])
                if loaded is not None and (loaded.checkpoint.events_offset > ends[ev_tp]
                                           or loaded.checkpoint.outcomes_offset > ends[out_tp]):
                    why = f"its checkpoint {loaded.checkpoint} is beyond the end of the log {ends}"
                    loaded, reason = None, "beyond_log_end"
                if loaded is not None:
                    assert scan is not None
                    part = self._from_snapshot(loaded, committed, scan)
                    ck = loaded.checkpoint
                    # The tail starts at the checkpoint, under the fence in force there (its writer's).
                    fence = LogFence({ev_tp: ck.epoch, out_tp: ck.epoch})
                    reader.seek(ev_tp, ck.events_offset)
                    reader.seek(out_tp, ck.outcomes_offset)
                else:
                    if s.processor_snapshots:
                        self.stats.rebuild_fallbacks[reason] += 1
                        (log.info if reason == "no_checkpoint" else log.error)(
                            "partition %d: not using the snapshot (%s): folding the whole log", partition, why)
                    part = _Partition(resume_at=committed, next_chunk=max(stale, default=-1) + 1,
                                      stale_chunks=stale)
                    if scan is not None:
                        # What the unused snapshot left: its terminal chunks are deleted once the
                        # rebuilt snapshot's checkpoint is written, its ``a:`` records of finished
                        # assessments once their new terminal chunks are acknowledged.
                        part.next_terminal_chunk = scan.next_terminal_chunk
                        part.stale_terminal_chunks = scan.terminal_chunk_seqs
                        part.state_records = scan.state_records
                    fence = LogFence()
                    await reader.seek_to_beginning(ev_tp, out_tp)
                # 1. Everything on the log so far (after the snapshot's checkpoint), honouring the fences on it.
                await self._read_log(reader, part, fence, ends, committed)
                # 2. Reserve an epoch above every fence on the log and every epoch the group's
                # metadata says was reserved before. The reservation is an offset commit, which the
                # group coordinator refuses to a member of an old generation: of two processors that
                # both believe they own p, only the current one gets an epoch, and any later owner
                # reads it back here and goes above it. (The log's fences cover a group that was
                # deleted and recreated: its metadata starts again at 0, its fences remain.)
                epoch = max(metadata_epoch(metadata), fence.current(ev_tp), fence.current(out_tp), state_epoch) + 1
                with translate_kafka_errors(f"reserving fence epoch {epoch} of partition {partition}"):
                    # A refusal (the group rebalanced) is FencedOut, raised through to _rebuild_pending.
                    await self._consumer.commit({cmd_tp: OffsetAndMetadata(committed, fence_metadata(epoch))})
                # 3. The fences: from here on, a reader ignores whatever an earlier owner writes. The
                # state topic's fence has a key of its own (never compacted away): a state an earlier
                # owner writes after it is fenced (streams/_snapshot.py, point 4).
                value = b""
                headers = fence_headers(epoch, self._owner)
                sent = await asyncio.gather(*(self._producer.send_and_wait(
                    tp.topic, value, partition=partition, headers=headers)
                    for tp in (ev_tp, out_tp)))
                self.stats.fences_written += 2
                if s.processor_snapshots:
                    await self._producer.send_and_wait(st_tp.topic, value, key=fence_key(epoch), partition=partition,
                                                       headers=headers)
                    self.stats.fences_written += 1
                # 4. What an earlier owner wrote between step 1 and our fences is on the log (readers
                # accept it): fold it too, up to and including our own fences.
                await self._read_log(reader, part, fence, {ev_tp: sent[0].offset + 1, out_tp: sent[1].offset + 1},
                                     committed)
            finally:
                await reader.stop()
        part.epoch = epoch
        # Everything up to our fences is folded: the gapless prefix a checkpoint may cover.
        part.events_next, part.outcomes_next = sent[0].offset + 1, sent[1].offset + 1
        for a in part.states.values():
            self._arm_deadline(part, a)
        # A full rebuild read the events and outcomes side by side: put the window in time order.
        self._trim(part, time.time(), protect_from=committed, reorder=part.source == "full")
        if part.source == "full":
            # All of it goes to the snapshot (in bounded writes, the checkpoint after the last).
            part.dirty = set(part.states) | set(part.terminal)
            part.new_outcomes = [o for o in part.outcomes.values() if isinstance(o, Outcome)]
        self.stats.rebuilds[part.source] += 1
        log.info("partition %d rebuilt from %s: %d live and %d terminal assessments, %d command ids, %d held events, "
                 "committed offset %d, fence epoch %d at events offset %d, %d fenced records ignored", partition,
                 "the snapshot and the log after it" if part.source == "snapshot" else "the whole log",
                 len(part.states), len(part.terminal), len(part.outcomes), len(part.held), committed, epoch,
                 sent[0].offset, fence.fenced)
        return part

    def _from_snapshot(self, loaded: LoadedSnapshot, committed: int, scan: SnapshotScan) -> _Partition:
        """A partition's state as ``scan`` holds it, read into ``loaded`` (the log after its
        checkpoint still to fold)."""
        part = _Partition(resume_at=committed, source="snapshot", states=loaded.states, terminal=loaded.terminal,
                          chunks=loaded.chunks, next_chunk=max(loaded.checkpoint.next_chunk,
                                                               max(scan.chunk_seqs, default=-1) + 1),
                          terminal_chunks=loaded.terminal_chunks, next_terminal_chunk=scan.next_terminal_chunk,
                          state_records=scan.state_records)
        # A finished assessment that still has an ``a:`` record (an older format's marker, or a
        # write cut short before its tombstone) goes to a terminal chunk, and the record is deleted.
        part.dirty = {aid for aid in part.state_records if aid in loaded.terminal}
        # Oldest first, as the window is kept (_trim drops from the front).
        part.outcomes = {row[0]: row for row in loaded.outcomes}
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
                self.stats.rebuild_records_read += len(recs)
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
        raw = header(rec.headers, COMMAND_OFFSET_HEADER)
        cmd_offset = int(raw) if raw is not None else None
        if ev.causation_id is not None and ev.causation_id not in part.outcomes:
            self._remember(part, Outcome(
                command_id=ev.causation_id, assessment_id=ev.assessment_id, accepted=True, processed_at=ev.recorded_at,
                command_offset=cmd_offset if cmd_offset is not None else -1, version=ev.version, event_id=ev.event_id,
            ))
        if part.source == "snapshot" and ev.version <= self._version(part, ev.assessment_id):
            # Already in the loaded state: written to the snapshot after the checkpoint, before a
            # crash (streams/_snapshot.py, point 2). A full rebuild would not apply it either.
            return
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
            self._remember(part, o)

    def _apply(self, part: _Partition, ev: Event) -> bool:
        aid = ev.assessment_id
        marker = part.terminal.get(aid)
        if marker is not None:
            # COMPLETED and CANCELLED accept no command, so only a record written around the
            # processor can follow one; kept out, as a full rebuild keeps it out.
            log.warning("event %s v%d of %r follows its terminal v%d (%s); not applied",
                        ev.event_id, ev.version, aid, marker[1], marker[0].value)
            return False
        cur = part.states.get(aid)
        if ev.version != (cur.version if cur else 0) + 1:
            log.warning("event %s v%d of %r does not follow v%s; not applied",
                        ev.event_id, ev.version, aid, cur.version if cur else 0)
            return False
        new = evolve(cur, ev)
        part.dirty.add(aid)
        if new.state.terminal:
            # Only (state, version) is kept of a finished assessment: memory and the snapshot grow
            # with the live assessments, plus a few dozen bytes per finished one.
            part.states.pop(aid, None)
            part.terminal[aid] = (new.state, new.version)
        else:
            part.states[aid] = new
            self._arm_deadline(part, new)
        return True

    @staticmethod
    def _version(part: _Partition, aid: str) -> int:
        cur = part.states.get(aid)
        if cur is not None:
            return cur.version
        marker = part.terminal.get(aid)
        return marker[1] if marker is not None else 0

    @staticmethod
    def _current(part: _Partition, aid: str) -> Assessment | None:
        """The state ``decide`` sees (a terminal marker as its stand-in)."""
        cur = part.states.get(aid)
        if cur is not None:
            return cur
        marker = part.terminal.get(aid)
        return marker_state(aid, *marker) if marker is not None else None

    # --- the idempotency window ----------------------------------------------------------------

    @staticmethod
    def _prior(part: _Partition, command_id: str) -> Outcome | None:
        """The remembered outcome of a command id (a snapshot's row becomes an ``Outcome`` here)."""
        found = part.outcomes.get(command_id)
        if found is None or isinstance(found, Outcome):
            return found
        o = part.outcomes[command_id] = row_outcome(found)  # same key: its place in the window stays
        return o

    @staticmethod
    def _remember(part: _Partition, o: Outcome) -> None:
        # Re-inserted at the end: the window stays in the order outcomes were produced.
        part.outcomes.pop(o.command_id, None)
        part.outcomes[o.command_id] = o
        part.new_outcomes.append(o)

    def _trim(self, part: _Partition, now: float, *, protect_from: int | None = None, reorder: bool = False) -> None:
        """Forget command ids beyond the window (``processor_idempotency_max_ids`` newest, none older
        than ``processor_idempotency_window_s``), oldest first. ``protect_from``: outcomes of commands
        at or after this offset stay (commands about to be consumed again, point 3). ``reorder``:
        sort first (after a takeover: the topics were read side by side, not in time order)."""
        window = part.outcomes
        if reorder:
            outcomes = sorted((o if isinstance(o, Outcome) else row_outcome(o) for o in window.values()),
                              key=_outcome_order)
            part.outcomes = window = {o.command_id: o for o in outcomes}
        limit = self.settings.processor_idempotency_max_ids
        oldest = now - self.settings.processor_idempotency_window_s
        # One pass from the oldest: the ids to forget, and the first outcome kept. Then each is
        # deleted in place, and the dict is copied (what stays) only after a large drop.
        #
        # Cost, why so: deleting a dict's first keys leaves dead slots in front, which every later
        # pass from the oldest crosses until the dict next grows its table and compacts them away
        # (after at most about as many insertions as it holds: bounded, and cheap to cross). A
        # loop asking for the first key after each deletion would cross them again and again:
        # quadratic (after a full rebuild, 167,000 ids down to 50,000, it held the event loop 10 s,
        # past the group's session timeout). Copying what stays after every batch avoided that but
        # cost a copy of the whole window per batch once it was full, the steady state: 17 µs per
        # command at 170 commands per partition and batch, 15 % of the processor's CPU. Copying
        # only past _TRIM_COPY_AFTER ids costs at most a copy per that many forgotten.
        size = len(window)
        doomed: list[str] = []
        head: Outcome | Row | None = None
        for cid, o in window.items():
            if size - len(doomed) <= limit and _outcome_time(o) >= oldest:
                head = o
                break
            if protect_from is not None and (o.command_offset if isinstance(o, Outcome) else o[2]) >= protect_from:
                head = o
                break
            doomed.append(cid)
        if len(doomed) > _TRIM_COPY_AFTER:
            part.outcomes = window = dict(itertools.islice(window.items(), len(doomed), None))
        else:
            for cid in doomed:
                del window[cid]
        # A chunk whose newest outcome is older than everything kept is no longer needed.
        kept_from = _outcome_time(head) if head is not None else float("inf")
        for seq, newest in list(part.chunks.items()):
            if newest < kept_from:
                del part.chunks[seq]
                part.stale_chunks.append(seq)

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
            events: list[_Appended] = []
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
                # The dead letters' acknowledgements are awaited with the events': one round trip.
                offsets = (await asyncio.gather(self._append_events(events), *sent))[0]
                self._advance([(partition, offset) for (_, partition, _, _, _), offset in zip(events, offsets)], "events")
                if events:
                    # Timed per record (the latency is per command) but with one clock read per batch.
                    acked, observe = time.time(), self.stats.command_to_event.observe
                    for _, _, _, stamp_ms, _ in events:
                        observe(max(0.0, acked - stamp_ms / 1000))
                sent = []  # usually stays empty: most batches cost one produce round trip
                for o, partition in outcomes:
                    value, headers = self._outcomes.encode(o)
                    headers.append((EPOCH_HEADER, str(self._parts[partition].epoch).encode()))
                    sent.append(await self._producer.send(
                        self.settings.outcomes_topic, value, key=o.assessment_id.encode(), partition=partition,
                        headers=headers,
                    ))
                acks = await asyncio.gather(*sent)
                self._advance([(partition, meta.offset) for (_, partition), meta in zip(outcomes, acks)], "outcomes")
            assert self._consumer is not None
            for tp, unresolved in stopped.items():
                self.stats.unresolvable += 1
                self._stops.stop_consumer(self._consumer, tp, unresolved)
            wall = time.time()
            for tp in commit:
                self._trim(self._parts[tp.partition], wall)
            return commit, token

    async def _append_events(self, events: list[_Appended]) -> list[int]:
        """Append ``events`` (event, partition, command offset, stamp) and return the offset of each,
        once all are acknowledged.

        Ordering: a partition's events go into record batches in the order given, and the batches
        of a partition are handed to the producer in that order (aiokafka queues a partition's
        batches, and the idempotent producer keeps their sequence), so each event's offset is its
        batch's base offset plus its place in the batch. (A partition's next batch is queued only
        once the one before it has been sent: aiokafka's ``add_batch`` waits for it.) One batch
        future per partition instead of one future per record: the processor's CPU per command
        was 4-8 % lower (A/B, 100,000 commands drained)."""
        producer = self._producer
        assert producer is not None
        topic = self.settings.events_topic
        open_batches: dict[int, tuple[Any, list[int]]] = {}
        submitted: list[tuple[asyncio.Future[RecordMetadata], list[int]]] = []
        epochs: dict[int, tuple[str, bytes]] = {}  # each partition's epoch header, made once per call
        stamped: datetime | None = None
        stamp = 0
        for i, (ev, partition, cmd_offset, _, reply_to) in enumerate(events):
            value, headers = self._events.encode(ev)
            headers.append((COMMAND_OFFSET_HEADER, str(cmd_offset).encode()))
            if reply_to is not None:  # for the projector: whom to notify with the new state
                headers.append((REPLY_HEADER, reply_to))
            # Our epoch: readers ignore this record if a later owner's fence precedes it.
            epoch = epochs.get(partition)
            if epoch is None:
                epoch = epochs[partition] = (EPOCH_HEADER, str(self._parts[partition].epoch).encode())
            headers.append(epoch)
            key = ev.assessment_id.encode()
            if ev.recorded_at is not stamped:  # one clock read per batch of commands: one conversion
                stamped = ev.recorded_at
                stamp = int(stamped.timestamp() * 1000)  # milliseconds, despite aiokafka's docstring
            builder, members = open_batches.get(partition) or (None, [])
            if builder is None or builder.append(key=key, value=value, headers=headers, timestamp=stamp) is None:
                if builder is not None:  # full: this partition's next batch follows it
                    submitted.append((await producer.send_batch(builder, topic, partition=partition), members))
                builder, members = producer.create_batch(), []
                # An empty batch takes any one record (one bigger than the batch size is sent alone).
                if builder.append(key=key, value=value, headers=headers, timestamp=stamp) is None:  # pragma: no cover
                    raise AssertionError(f"an empty record batch refused event {ev.event_id}")  # aiokafka's contract
            members.append(i)
            open_batches[partition] = (builder, members)
        for partition, (builder, members) in open_batches.items():
            submitted.append((await producer.send_batch(builder, topic, partition=partition), members))
        self.stats.event_batches += len(submitted)
        offsets = [0] * len(events)
        for meta, members in zip(await asyncio.gather(*(f for f, _ in submitted)), (m for _, m in submitted)):
            for place, i in enumerate(members):
                offsets[i] = meta.offset + place
        return offsets

    def _advance(self, appended: list[tuple[int, int]], kind: str) -> None:
        """Extend each partition's gapless folded prefix by its acknowledged appends; an offset that
        does not follow (a record written around this processor) freezes it (streams/_snapshot.py, 3)."""
        for partition, offset in sorted(appended):
            part = self._parts.get(partition)
            if part is None:
                continue
            nxt = part.events_next if kind == "events" else part.outcomes_next
            if nxt is None:
                continue
            if offset != nxt:
                log.warning("partition %d: %s offset %d appended, %d expected: a record not written by this processor "
                            "is in between; snapshot checkpoints stay before it until the next takeover",
                            partition, kind, offset, nxt)
                nxt = None
            else:
                nxt = offset + 1
            if kind == "events":
                part.events_next = nxt
            else:
                part.outcomes_next = nxt

    def _handle_one(self, part: _Partition, rec: ConsumerRecord[bytes, bytes], now: datetime,
                    events: list[_Appended], outcomes: list[tuple[Outcome, int]],
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
            if cmd.command_id not in part.outcomes:
                self._remember(part, Outcome(
                    command_id=cmd.command_id, assessment_id=cmd.assessment_id, accepted=True, processed_at=now,
                    command_offset=rec.offset, version=held.version, event_id=held.event_id))
            return
        prior = self._prior(part, cmd.command_id)
        if prior is not None:
            if prior.command_offset != rec.offset:  # a re-sent command, not our own replay
                self.stats.duplicates += 1
                outcomes.append((
                    dataclasses.replace(prior, processed_at=now, command_offset=rec.offset, duplicate=True),
                    rec.partition,
                ))
            return
        try:
            ev = decide(self._current(part, cmd.assessment_id), cmd, now, source=env.source, occurred_at=env.occurred_at,
                        max_json_bytes=self.settings.max_request_bytes, default_max_retries=self.settings.default_max_retries)
        except StoreUsageError as e:
            self.stats.rejected += 1
            self.stats.rejected_by_type[type(e).__name__] += 1
            o = Outcome(command_id=cmd.command_id, assessment_id=cmd.assessment_id, accepted=False, processed_at=now,
                        command_offset=rec.offset, error_type=type(e).__name__, error_message=str(e),
                        error_details=e.details())
            self._remember(part, o)
            outcomes.append((o, rec.partition))
        else:
            # Accepted: the event itself is the outcome (its causation_id is the command id and the
            # projector derives the outcome row from it), so no outcome record is written.
            self.stats.accepted += 1
            if isinstance(cmd, ExpireDeadline):
                self.stats.deadlines_fired += 1
            self._apply(part, ev)
            events.append((ev, rec.partition, rec.offset, rec.timestamp, _reply_to(rec.headers)))
            # Every field in order (see Outcome), not the frozen __init__: one per accepted command.
            self._remember(part, _new_outcome(cmd.command_id, cmd.assessment_id, True, now, rec.offset, ev.version,
                                              ev.event_id, None, None, None, False))


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

    # --- snapshots (streams/_snapshot.py) ------------------------------------------------------

    async def _write_snapshots(self, *, force: bool = False) -> None:
        """Write what changed in each owned partition since its last write, at most every
        ``processor_snapshot_interval_s`` (``force``: now, all of it). Called between batches only, after their commit: every
        state written is one of committed commands (streams/_snapshot.py, point 1)."""
        s = self.settings
        if not s.processor_snapshots or self._producer is None:
            return
        # Under the lock: a revocation waits for the write, so nothing is written after a handover.
        async with self._lock:
            now = time.monotonic()
            for partition, part in list(self._parts.items()):
                if not force and now - part.last_snapshot < s.processor_snapshot_interval_s:
                    continue
                covered = (part.events_next, part.outcomes_next)
                checkpoint_due = None not in covered and covered != part.checkpointed and not part.held
                if part.dirty or part.new_outcomes or part.stale_chunks or checkpoint_due:
                    await self._write_snapshot(partition, part)
                    while force and part.dirty:  # a clean stop writes all of it, checkpoint last
                        await self._write_snapshot(partition, part)
                part.last_snapshot = now

    async def _write_snapshot(self, partition: int, part: _Partition) -> None:
        producer = self._producer
        assert producer is not None
        started = time.perf_counter()
        topic = state_topic(self.settings)
        headers = [(EPOCH_HEADER, str(part.epoch).encode())]
        records: list[tuple[bytes, bytes | None]] = []
        finished: list[str] = []
        for _ in range(min(len(part.dirty), self.settings.processor_snapshot_max_records)):
            aid = part.dirty.pop()
            a = part.states.get(aid)
            if a is not None:
                records.append((state_key(aid), encode_state(a)))
                part.state_records.add(aid)
            elif aid in part.terminal:
                finished.append(aid)
        retired = self._pack_terminals(part, finished, records)
        # Only outcomes still in the window (and not replaced since) go into the chunks.
        live = [o for o in part.new_outcomes if part.outcomes.get(o.command_id) is o]
        part.new_outcomes = []
        for i in range(0, len(live), _CHUNK_OUTCOMES):
            chunk = live[i:i + _CHUNK_OUTCOMES]
            seq, part.next_chunk = part.next_chunk, part.next_chunk + 1
            part.chunks[seq] = _newest_timestamp(chunk)
            records.append((chunk_key(seq), encode_chunk(chunk)))
        records += [(chunk_key(seq), None) for seq in part.stale_chunks]  # tombstones
        part.stale_chunks = []
        # What the new terminal chunks replace: the ``a:`` records of the assessments that finished,
        # and the merged chunks.
        replaced: list[tuple[bytes, bytes | None]] = [(state_key(aid), None) for aid in finished
                                                       if aid in part.state_records]
        replaced += [(terminal_chunk_key(seq), None) for seq in retired]
        part.state_records.difference_update(finished)
        with translate_kafka_errors(f"writing the snapshot of partition {partition}"):
            await self._send_all(topic, partition, headers, records)
            if replaced:
                # Ordering (streams/_snapshot.py, point 6): only once the terminal chunks holding
                # them are acknowledged. Sent in the same batch, a failed chunk could be followed
                # by its tombstones, and a finished assessment would be in no record at all.
                await self._send_all(topic, partition, headers, replaced)
            # The checkpoint only after its states are acknowledged, only when all changed states are
            # written, and never while held-back events wait (streams/_snapshot.py, point 1).
            covered = (part.events_next, part.outcomes_next)
            if not part.dirty and not part.held and covered[0] is not None and covered[1] is not None:
                ck = Checkpoint(part.epoch, covered[0], covered[1], part.next_chunk)
                value = encode_checkpoint(ck)
                records.append((checkpoint_key(part.epoch), value))
                await producer.send_and_wait(topic, value, key=checkpoint_key(part.epoch), partition=partition,
                                             headers=headers)
                part.checkpointed = (covered[0], covered[1])
                if part.stale_terminal_chunks:
                    # After a full rebuild: the replaced snapshot's terminal chunks, only now that a
                    # checkpoint covers every finished assessment in the new ones (point 6).
                    stale = [(terminal_chunk_key(seq), None) for seq in part.stale_terminal_chunks]
                    part.stale_terminal_chunks = []
                    await self._send_all(topic, partition, headers, stale)
                    replaced += stale
        self.stats.snapshot_writes += 1
        self.stats.snapshot_records_written += len(records) + len(replaced)
        self.stats.snapshot_bytes_written += sum(len(k) + len(v or b"") for k, v in records + replaced)
        self.stats.snapshot_write_seconds.observe(time.perf_counter() - started)

    async def _send_all(self, topic: str, partition: int, headers: list[tuple[str, bytes]],
                        records: Sequence[tuple[bytes, bytes | None]]) -> None:
        """Send ``records`` to one partition in order and wait for every acknowledgement."""
        producer = self._producer
        assert producer is not None
        sent = [await producer.send(topic, value, key=key, partition=partition, headers=headers)
                for key, value in records]
        await asyncio.gather(*sent)

    @staticmethod
    def _pack_terminals(part: _Partition, finished: list[str], records: list[tuple[bytes, bytes | None]]) -> list[int]:
        """Put ``finished`` into new terminal chunks, appended to ``records``. When
        ``_MAX_SMALL_TERMINAL_CHUNKS`` small chunks have built up, their assessments go into the
        new chunks too, and their numbers are returned: to be deleted once the new ones are
        acknowledged (point 6)."""
        small = [seq for seq, aids in part.terminal_chunks.items() if len(aids) < _CHUNK_TERMINALS // 2]
        retired: list[int] = []
        aids = finished
        if len(small) >= _MAX_SMALL_TERMINAL_CHUNKS:
            retired = small
            aids = list(dict.fromkeys([aid for seq in small for aid in part.terminal_chunks.pop(seq)] + finished))
        for i in range(0, len(aids), _CHUNK_TERMINALS):
            chunk = aids[i:i + _CHUNK_TERMINALS]
            seq, part.next_terminal_chunk = part.next_terminal_chunk, part.next_terminal_chunk + 1
            part.terminal_chunks[seq] = chunk
            records.append((terminal_chunk_key(seq), encode_terminals((aid, *part.terminal[aid]) for aid in chunk)))
        return retired

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

