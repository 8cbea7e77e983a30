"""Reverse sync: every event written through the store, re-emitted in the legacy message format on
``legacy.assessment-events.reverse``, so rolling back to legacy loses nothing.

The rule is per event, not per assessment, and does not read the flags: an event is synced iff its
``source`` is ``store``. Events with source ``legacy-bridge`` came from legacy (echoing them would
loop), ``migration`` ones from a legacy export (legacy has them). Per event, because one assessment
can be written by both sides over its life: created on legacy, then served by the store after the
percentage went up; legacy must receive exactly the store's part of its history. Not reading the
flags, because "was dual mode on?" at processing time is not a property of the event: a re-read
(new group, restart after a crash) would sync a different set; this way a re-read emits the same
messages, byte for byte.

Messages are deterministic functions of their event (``emittedAt`` = the event's ``recorded_at``,
``seq`` = its version, ``reverseId`` = ``<assessment id>:<version>``), so a re-read emits identical
copies, which the legacy side dedupes on ``seq`` (versions only grow per assessment).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from assessment_store.core import (
    JSON,
    AsyncLifecycle,
    Cancelled,
    CodecError,
    Completed,
    Created,
    Event,
    EventSource,
    Failed,
    MetricFamily,
    ProgressUpdated,
    Settings,
    Started,
    UnresolvableSchema,
    counter,
    counter_by,
    gauge,
)
from assessment_store.schemas import EventCodec
from assessment_store.streams import (
    LogFence,
    PartitionStops,
    SchemaResolver,
    TopicSpec,
    Verdict,
    admin_client,
    committed_with_metadata,
    ensure_topics,
    fence_metadata,
    kafka_client_options,
    kafka_principal,
    metadata_epoch,
    topic_end_offsets,
    translate_kafka_errors,
)

__all__ = ["REVERSE_EMITTER", "ReverseStats", "ReverseSync", "ReverseSyncStatus", "reverse_sync_status",
           "reverse_topic_spec", "to_legacy_message"]

log = logging.getLogger("assessment_store.migration.reverse")

REVERSE_EMITTER = "assessment-store-reverse"
_SCHEMA_RETRY_S = 5.0
"""how long a partition stopped at an unresolvable event waits before it is read again"""


def to_legacy_message(event: Event) -> dict[str, JSON] | None:
    """The legacy message of one event (docs/legacy-format.md), or None when legacy has no such event (retry)."""
    p = event.payload
    ts = event.recorded_at.isoformat().replace("+00:00", "Z")
    data: dict[str, JSON] = {"assessmentId": event.assessment_id, "timestamp": ts}
    if isinstance(p, Created):
        name, data = "created", {**data, "status": "pending", "progress": 0, "request": p.request}
    elif isinstance(p, Started):
        name, data = "started", {**data, "status": "processing"}
    elif isinstance(p, ProgressUpdated):
        # No status: the event does not say whether it was PENDING or PROCESSING (every field may be missing).
        name, data = "progress", {**data, "progress": p.progress, "message": p.message}
    elif isinstance(p, Completed):
        name, data = "completed", {**data, "status": "completed", "progress": 100, "result": p.result,
                                   "duration": p.duration_ms}
    elif isinstance(p, Failed):
        name, data = "failed", {**data, "status": "failed", "error": p.error, "duration": p.duration_ms}
    elif isinstance(p, Cancelled):
        name, data = "cancelled", {**data, "status": "cancelled"}
    else:
        return None
    return {"event": f"assessment.{name}", "data": data, "emittedAt": ts, "seq": event.version,
            "emitter": REVERSE_EMITTER, "reverseId": f"{event.assessment_id}:{event.version}"}


def reverse_topic_spec(settings: Settings, topic: str | None = None) -> TopicSpec:
    """The reverse topic (default ``settings.legacy_reverse_topic``): kept forever, like the legacy topic,
    because a rollback may need to replay it from the start."""
    return TopicSpec(topic or settings.legacy_reverse_topic, settings.partitions,
                     {"retention.ms": "-1", "retention.bytes": "-1"})


@dataclass(slots=True)
class ReverseStats:
    """``events == emitted + skipped_not_store + skipped_no_legacy_event + undecodable`` once a batch is done;
    ``fenced`` records (and fence records themselves) are not among ``events``."""

    events: int = 0
    emitted: int = 0
    skipped_not_store: int = 0
    skipped_no_legacy_event: int = 0
    undecodable: int = 0
    fenced: int = 0
    """events a processor wrote after a later owner's fence (streams/_fence.py): never synced"""
    unresolvable: int = 0
    """stops at an event whose writer schema cannot be resolved: the partition waits there (not among
    ``events``: the event is read again)"""
    batches: int = 0
    lag_seconds: float = 0.0
    """at the last non-empty batch: how long ago its oldest record was written to the events topic"""

    def metric_families(self) -> list[MetricFamily]:
        """The Prometheus view of these counters (read at each scrape; docs/monitoring.md, "Metrics")."""
        p = "assessment_store_reverse_sync_"
        return [
            counter(p + "events_total", "Events read from the events topic (fenced ones excluded)", self.events),
            counter(p + "records_emitted_total", "Legacy-format records written", self.emitted),
            counter_by(p + "events_skipped_total", "Events not synced, by reason", ["reason"],
                       {"not_store": self.skipped_not_store, "no_legacy_event": self.skipped_no_legacy_event,
                        "undecodable": self.undecodable, "fenced": self.fenced}),
            counter(p + "unresolvable_schema_total", "Partition stops at an event whose writer schema is unresolvable",
                    self.unresolvable),
            counter(p + "batches_total", "Batches handled", self.batches),
            gauge(p + "lag_seconds", "At the last batch, age of its oldest event when it was emitted", self.lag_seconds),
        ]

    def to_json(self) -> dict[str, JSON]:
        return {"events": self.events, "emitted": self.emitted, "skippedNotStore": self.skipped_not_store,
                "skippedNoLegacyEvent": self.skipped_no_legacy_event, "undecodable": self.undecodable,
                "fenced": self.fenced, "unresolvable": self.unresolvable,
                "batches": self.batches}


class ReverseSync(AsyncLifecycle):
    """Consumer (own group) of the events topic -> legacy messages.

    ``async with ReverseSync(settings) as sync: await sync.run(stop_event)``; start/stop idempotent.
    """

    def __init__(self, settings: Settings, *, group_id: str | None = None, topic: str | None = None,
                 stats: ReverseStats | None = None) -> None:
        """``stats``: counters to continue (a process keeps one across supervised restarts)."""
        self.settings = settings
        self.group_id = group_id or settings.reverse_sync_group
        self.topic = topic or settings.legacy_reverse_topic
        self.stats = stats if stats is not None else ReverseStats()
        self._codec = EventCodec()
        # Events of a newer writer are resolved (schemas topic, registry), never counted undecodable;
        # one that cannot be stops its partition there until it can.
        self._resolver = SchemaResolver(settings, "reverse-sync", [self._codec.avro], retry_s=_SCHEMA_RETRY_S)
        self._stops = PartitionStops("reverse-sync", self._resolver, _SCHEMA_RETRY_S)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        # The fence in force per partition at our position; a partition assigned to us is loaded from
        # the metadata of the group's committed offset (where every commit records it) before use.
        self._fence = LogFence()
        self._fence_known: set[TopicPartition] = set()

    async def start(self) -> None:
        if self._consumer is not None:
            return
        await ensure_topics(self.settings, [reverse_topic_spec(self.settings, self.topic)], principal="reverse-sync")
        consumer = AIOKafkaConsumer(
            **kafka_client_options(self.settings, "reverse-sync"), group_id=self.group_id,
            enable_auto_commit=False, auto_offset_reset="earliest", isolation_level="read_committed",
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            session_timeout_ms=self.settings.consumer_session_timeout_ms,
        )
        producer = AIOKafkaProducer(**kafka_client_options(self.settings, "reverse-sync"), acks="all",
                                    enable_idempotence=True, linger_ms=5)
        consumer.subscribe([self.settings.events_topic], listener=_ForgetFences(self))
        try:
            with translate_kafka_errors("starting the reverse sync", kafka_principal(self.settings, "reverse-sync")):
                await producer.start()
                await consumer.start()
        except BaseException:
            await producer.stop()
            await consumer.stop()
            raise
        self._consumer, self._producer = consumer, producer

    async def stop(self) -> None:
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        if producer is not None:
            await producer.stop()
        if consumer is not None:
            await consumer.stop()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Sync until ``stop`` is set (forever without one)."""
        if self._consumer is None or self._producer is None:
            raise RuntimeError("ReverseSync is not started: use `async with ReverseSync(settings) as sync`")
        consumer, producer = self._consumer, self._producer
        stop = stop or asyncio.Event()
        while not stop.is_set():
            due = self._stops.due()
            if due:
                # Sought back to the unresolvable event when stopped: read again from there.
                consumer.resume(*[tp for tp in due if tp in consumer.assignment()])
            with translate_kafka_errors("reading the events topic"):
                batch = await consumer.getmany(timeout_ms=200, max_records=2000)
            await self._resolver.learn(batch)
            futures = []
            done: dict[TopicPartition, int] = {}
            for tp in batch:
                if tp not in self._fence_known:
                    _offset, metadata = await committed_with_metadata(consumer, tp)
                    self._fence.epochs[tp] = metadata_epoch(metadata)
                    self._fence_known.add(tp)
            with translate_kafka_errors("emitting reverse-synced messages"):
                for tp, records in batch.items():
                    for rec in records:
                        # Judging an accepted record changes nothing: the one a stop reads again is judged again.
                        verdict, _epoch = self._fence.judge(tp, rec.headers)
                        if verdict is not Verdict.ACCEPTED:
                            self.stats.fenced += verdict is Verdict.FENCED
                            continue
                        try:
                            message = self._translate(rec.value, rec.headers, f"{rec.topic}/{rec.partition}/{rec.offset}")
                        except UnresolvableSchema as e:
                            # Ordering: the partition's progress ends before this event (its offset is
                            # what gets committed); nothing after it is synced before it is.
                            self.stats.unresolvable += 1
                            self._stops.stop_consumer(consumer, tp, e.at(rec.topic, rec.partition, rec.offset))
                            done[tp] = rec.offset
                            break
                        if message is not None:
                            futures.append(await producer.send(
                                self.topic, json.dumps(message, separators=(",", ":")).encode(), key=rec.key))
                    else:
                        if records:
                            done[tp] = records[-1].offset + 1
                # Ordering: every message of the batch is acknowledged before its offsets are
                # committed, so a crash re-emits (identical, dedupable) messages, never skips one.
                # Per assessment the order is kept: one events partition holds all of an assessment's
                # events in version order, and its messages go, in that order, to the one reverse
                # partition its key hashes to, through an idempotent producer (no reordering on retry).
                await asyncio.gather(*futures)
                if done:
                    # With each offset, the fence in force there: a restart or the next owner of the
                    # partition resumes with it.
                    await consumer.commit({tp: OffsetAndMetadata(offset, fence_metadata(self._fence.current(tp)))
                                           for tp, offset in done.items()})
            self.stats.emitted += len(futures)
            if batch:
                self.stats.batches += 1
                oldest = min(recs[0].timestamp for recs in batch.values() if recs)
                self.stats.lag_seconds = max(0.0, time.time() - oldest / 1000)

    def _translate(self, value: bytes | None, headers: object, where: str) -> dict[str, JSON] | None:
        """The legacy message of one event record, None when none is due. Raises ``UnresolvableSchema``
        (not counted among ``events``: the record is read again, see run)."""
        try:
            event = self._codec.decode(value, headers)  # type: ignore[arg-type]
        except UnresolvableSchema:
            raise
        except CodecError as e:
            # Counted and logged with its position; the record itself stays on the events topic.
            self.stats.events += 1
            self.stats.undecodable += 1
            log.error("reverse sync: cannot decode %s (%s); skipped", where, e)
            return None
        self.stats.events += 1
        if event.source is not EventSource.STORE:
            self.stats.skipped_not_store += 1
            return None
        message = to_legacy_message(event)
        if message is None:
            self.stats.skipped_no_legacy_event += 1
        return message


class _ForgetFences(ConsumerRebalanceListener):  # type: ignore[misc]
    """A (re)assigned partition's fence is read again from the committed metadata before its first batch."""

    def __init__(self, sync: ReverseSync) -> None:
        self.sync = sync

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.sync._fence_known.difference_update(revoked)
        self.sync._stops.forget(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.sync._fence_known.difference_update(assigned)


@dataclass(frozen=True, slots=True)
class ReverseSyncStatus:
    """How far the reverse sync's consumer group is, as an operator needs it before moving traffic to legacy."""

    group: str
    members: int
    """Consumers in the group right now (0: no reverse sync is running)."""
    behind: int
    """Events on the events topic the group has not committed yet (all of them, when it never ran)."""

    def describe(self) -> str:
        if self.members == 0:
            return (f"reverse sync (group {self.group}) is NOT running, {self.behind:,} events behind: store-written "
                    "changes do not reach legacy, and legacy calls on such assessments fail with LegacyNotSynced "
                    "until it runs (`assessment-store stack up reverse-sync`)")
        return f"reverse sync (group {self.group}): running ({self.members} member(s)), {self.behind:,} events behind"

    def to_json(self) -> dict[str, JSON]:
        return {"group": self.group, "members": self.members, "behind": self.behind}


async def reverse_sync_status(settings: Settings, *, group_id: str | None = None) -> ReverseSyncStatus:
    """The reverse sync group's members and lag on the events topic."""
    group = group_id or settings.reverse_sync_group
    async with admin_client(settings, "dashboard") as admin:
        with translate_kafka_errors(f"describing consumer group {group}", kafka_principal(settings, "dashboard")):
            described = await admin.describe_consumer_groups([group])
            committed = await admin.list_consumer_group_offsets(group)
    # The raw DescribeGroups answer: groups = [(error_code, group_id, state, protocol_type, protocol, members, ...)].
    members = sum(len(g[5]) for response in described for g in response.groups if g[1] == group)
    done = {tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == settings.events_topic}
    ends = await topic_end_offsets(settings, settings.events_topic, principal="dashboard")
    behind = sum(max(0, end - done.get(p, 0)) for p, end in ends.items())
    return ReverseSyncStatus(group, members, behind)
