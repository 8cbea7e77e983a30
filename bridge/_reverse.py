"""Reverse sync: events of assessments created through the store, re-emitted in the legacy message
format on ``legacy.assessment-events.reverse``, so rolling back to legacy loses nothing.

Only assessments whose ``AssessmentCreated`` event has source ``store`` are synced (those created
through the legacy bridge or the import already exist on legacy), and only while dual mode is on
(read when the event is processed). Messages are deterministic functions of their event
(``emittedAt`` = the event's ``recorded_at``, ``seq`` = its version, ``reverseId`` =
``<assessment id>:<version>``), so a re-read emits byte-identical copies the legacy side dedupes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from assessment_store._config import Settings
from assessment_store._errors import CodecError
from assessment_store._model import (
    JSON,
    Cancelled,
    Completed,
    Created,
    Event,
    EventSource,
    Failed,
    ProgressUpdated,
    Started,
)
from schemas import EventCodec
from streams._kafka import TopicSpec, ensure_topics, translate_kafka_errors

from ._router import FlagSource

__all__ = ["REVERSE_EMITTER", "ReverseStats", "ReverseSync", "to_legacy_message"]

log = logging.getLogger("assessment_store.bridge.reverse")

REVERSE_EMITTER = "assessment-store-reverse"


def to_legacy_message(event: Event) -> dict[str, JSON] | None:
    """The legacy message of one event (DESIGN.md format), or None when legacy has no such event (retry)."""
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


@dataclass(slots=True)
class ReverseStats:
    events: int = 0
    emitted: int = 0
    skipped_not_store: int = 0
    skipped_dual_mode_off: int = 0
    skipped_no_legacy_event: int = 0
    undecodable: int = 0


class ReverseSync:
    """Consumer (own group) of the events topic -> legacy messages. ``await sync.run(stop_event)``."""

    def __init__(self, settings: Settings, flags: FlagSource, *, group_id: str = "assessment-store-reverse-sync",
                 topic: str | None = None, capacity: int = 1_000_000) -> None:
        self.settings = settings
        self.flags = flags
        self.group_id = group_id
        self.topic = topic or settings.legacy_topic + ".reverse"
        self.stats = ReverseStats()
        self._codec = EventCodec()
        # id -> created through the store? Filled from Created events, which precede every other event
        # of their assessment on its partition (keyed by id), so a group reading from offset 0 knows
        # every id it meets. Bounded; an evicted id is treated as not store-created (logged via stats).
        self._origin: OrderedDict[str, bool] = OrderedDict()
        self._capacity = capacity

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_topics(self.settings, [TopicSpec(self.topic, self.settings.partitions,
                                                      {"retention.ms": "-1", "retention.bytes": "-1"})])
        consumer = AIOKafkaConsumer(
            self.settings.events_topic, bootstrap_servers=self.settings.kafka_bootstrap, group_id=self.group_id,
            enable_auto_commit=False, auto_offset_reset="earliest", isolation_level="read_committed",
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
        )
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all",
                                    enable_idempotence=True, linger_ms=5)
        with translate_kafka_errors("starting the reverse sync"):
            await consumer.start()
            await producer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=2000)
                futures = []
                for records in batch.values():
                    for rec in records:
                        message = self._translate(rec.value, rec.headers)
                        if message is not None:
                            futures.append(await producer.send(
                                self.topic, json.dumps(message, separators=(",", ":")).encode(),
                                key=rec.key))
                # Ordering: every message of the batch is acknowledged before its offsets are
                # committed, so a crash re-emits (identical, dedupable) messages, never skips one.
                with translate_kafka_errors("emitting reverse-synced messages"):
                    await asyncio.gather(*futures)
                    if batch:
                        await consumer.commit()
                self.stats.emitted += len(futures)
        finally:
            await producer.stop()
            await consumer.stop()

    def _translate(self, value: bytes | None, headers: object) -> dict[str, JSON] | None:
        self.stats.events += 1
        try:
            event = self._codec.decode(value, headers)  # type: ignore[arg-type]
        except CodecError:
            self.stats.undecodable += 1
            return None
        if isinstance(event.payload, Created):
            self._origin[event.assessment_id] = event.source is EventSource.STORE
            while len(self._origin) > self._capacity:
                self._origin.popitem(last=False)
        if not self._origin.get(event.assessment_id, False):
            self.stats.skipped_not_store += 1
            return None
        if not self.flags.current().enable_dual_mode:
            self.stats.skipped_dual_mode_off += 1
            return None
        message = to_legacy_message(event)
        if message is None:
            self.stats.skipped_no_legacy_event += 1
        return message
