"""Migration feature flags as events on a compacted Kafka topic.

Every instance runs a ``FlagStore``: it reads ``assessments.migration-flags`` from offset 0 with no
consumer group (each instance must see every change, not a share of them), keeps the latest flags
and calls its subscribers on each change. ``update(actor, **changes)`` appends one JSON flag-change
event (who, when, old and new values, the full resulting flags) under one constant key, so log
compaction keeps the latest flags forever, and leaves a row in ``public.migration_audit``
(operation ``flags_update``): compaction eventually drops old changes from the topic, the table
keeps them all.

Ordering, the part that makes every instance agree:

* The topic has ONE partition and every record has the same key: Kafka orders records within a
  partition only, so every instance folds the same changes in the same order and ends on the same
  flags. Each record carries the full resulting flags, so folding = taking the last record; a
  compacted-away older record changes nothing.
* ``update`` is a read-modify-write, and Kafka has no conditional append: two instances updating
  different flags at once could each write "their" full flags and lose the other's change. So
  updates are serialized through a PostgreSQL advisory lock (held by the audit transaction), and
  under it the instance first catches up to the topic's end offset before computing the new flags.
  Every writer holds the lock until its record is acknowledged (acks=all), so the end offset it
  reads includes every earlier update. ``version`` (previous + 1) makes a gap or a fork visible.
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import json
import logging
import math
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from assessment_store.core import (
    JSON,
    AsyncLifecycle,
    KafkaUnavailable,
    MetricFamily,
    Settings,
    ValidationError,
    counter,
    new_id,
)
from assessment_store.projections import connect, record_audit, translate_db_errors
from assessment_store.streams import Principal, TopicSpec, ensure_topics, kafka_client_options, kafka_principal, translate_kafka_errors

__all__ = [
    "AUDIT_OPERATION", "FLAGS_KEY", "FLAGS_TOPIC", "FlagChange", "FlagStore", "FlagStoreStats", "MigrationFlags",
    "audit_trail", "default_actor", "flags_topic_spec",
]

log = logging.getLogger("assessment_store.migration.flags")

FLAGS_TOPIC = "assessments.migration-flags"
FLAGS_KEY = b"migration-flags"
"""The one key of every flag record: compaction keeps the latest record per key, i.e. the current flags."""
AUDIT_OPERATION = "flags_update"
_UPDATE_LOCK = 0x666C6167_7570  # pg_advisory_xact_lock key: "flagup"
_MAX_SALT = 200

# Python field name <-> the name on the flags topic (camelCase, the legacy service's names; docs/legacy-format.md).
_JSON_NAMES: dict[str, str] = {
    "enable_assessment_store": "enableAssessmentStore",
    "enable_legacy_fallback": "enableLegacyFallback",
    "migration_percentage": "migrationPercentage",
    "enable_metrics": "enableMetrics",
    "enable_audit_logging": "enableAuditLogging",
    "enable_dual_mode": "enableDualMode",
    "enable_shadow_comparison": "enableShadowComparison",
    "routing_salt": "routingSalt",
}
_PY_NAMES = {v: k for k, v in _JSON_NAMES.items()}


def default_actor() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def flags_topic_spec(topic: str = FLAGS_TOPIC) -> TopicSpec:
    # One partition: the total order of flag changes is the order of this one partition.
    # min.compaction.lag.ms keeps a week of changes readable by history() before compaction may
    # fold them into the latest; the audit table keeps them beyond that.
    return TopicSpec(topic, 1, {
        "cleanup.policy": "compact",
        "min.compaction.lag.ms": str(7 * 24 * 3600 * 1000),
        "retention.ms": "-1",
    })


@dataclass(frozen=True, slots=True)
class MigrationFlags:
    """The migration flags (docs/legacy-format.md) plus the routing salt. The defaults are the safe state:
    everything on legacy, fallback on."""

    enable_assessment_store: bool = False
    enable_legacy_fallback: bool = True
    migration_percentage: float = 0.0
    enable_metrics: bool = True
    """whether routers record per-call latency histograms (their counters are always kept)"""
    enable_audit_logging: bool = True
    enable_dual_mode: bool = False
    enable_shadow_comparison: bool = False
    """Observe each routed call on the other side and compare (``migration/_shadow.py``)."""
    routing_salt: str = "assessment-store-rollout"

    def __post_init__(self) -> None:
        for name in _JSON_NAMES:
            value = getattr(self, name)
            if name == "migration_percentage":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValidationError(name, f"must be a number, got {type(value).__name__}")
                if not math.isfinite(value) or not 0 <= value <= 100:
                    raise ValidationError(name, f"must be a finite number in [0, 100], got {value!r}")
                object.__setattr__(self, name, float(value))
            elif name == "routing_salt":
                if not isinstance(value, str) or not value.strip() or len(value) > _MAX_SALT:
                    raise ValidationError(name, f"must be a non-blank string of at most {_MAX_SALT} characters")
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise ValidationError(name, "contains a lone surrogate") from e
            elif not isinstance(value, bool):
                raise ValidationError(name, f"must be true or false, got {value!r}")

    def to_json(self) -> dict[str, JSON]:
        """camelCase, the names on the flags topic."""
        return {_JSON_NAMES[f.name]: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> MigrationFlags:
        """From camelCase (or snake_case) names; unknown names are refused, missing ones default."""
        return cls(**_normalize(doc))

    def replace(self, **changes: Any) -> MigrationFlags:
        return dataclasses.replace(self, **_normalize(changes))


def _normalize(doc: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in doc.items():
        py = _PY_NAMES.get(name, name)
        if py not in _JSON_NAMES:
            raise ValidationError(name, f"unknown flag (known: {', '.join(sorted(_JSON_NAMES))})")
        out[py] = value
    return out


@dataclass(frozen=True, slots=True)
class FlagChange:
    """One flag-change event: who changed what, when, and the flags that resulted."""

    change_id: str
    version: int
    actor: str
    at: datetime
    old: dict[str, JSON]
    new: dict[str, JSON]
    flags: MigrationFlags
    offset: int | None = None

    def to_json(self) -> dict[str, JSON]:
        return {
            "type": "MigrationFlagsChanged", "changeId": self.change_id, "version": self.version,
            "actor": self.actor, "at": self.at.isoformat(), "old": self.old, "new": self.new,
            "flags": self.flags.to_json(),
        }

    @classmethod
    def from_record(cls, value: bytes, offset: int) -> FlagChange:
        doc = json.loads(value)
        return cls(
            change_id=str(doc["changeId"]), version=int(doc["version"]), actor=str(doc["actor"]),
            at=datetime.fromisoformat(doc["at"]), old=dict(doc["old"]), new=dict(doc["new"]),
            flags=MigrationFlags.from_json(doc["flags"]), offset=offset,
        )


def store_share(flags: MigrationFlags) -> float:
    """Percent of routing keys the flags send to the store (0 with the store off, 100 without dual mode)."""
    if not flags.enable_assessment_store:
        return 0.0
    return float(flags.migration_percentage) if flags.enable_dual_mode else 100.0


@dataclass(slots=True)
class FlagStoreStats:
    changes_seen: int = 0
    invalid_records: int = 0
    subscriber_errors: int = 0
    updates_written: int = 0
    rollbacks_seen: int = 0
    """changes that sent a smaller share of routing keys to the store (``store_share`` went down)"""

    def metric_families(self) -> list[MetricFamily]:
        """The Prometheus view of these counters (read at each scrape; docs/monitoring.md, "Metrics")."""
        p = "assessment_store_flag_"
        return [
            counter(p + "changes_total", "Flag changes this instance has applied (its own and others')",
                    self.changes_seen),
            counter(p + "rollbacks_total", "Flag changes that sent fewer routing keys to the store", self.rollbacks_seen),
            counter(p + "updates_written_total", "Flag changes this instance wrote", self.updates_written),
            counter(p + "invalid_records_total", "Records of the flags topic that were not flag changes",
                    self.invalid_records),
            counter(p + "subscriber_errors_total", "Flag subscribers that raised", self.subscriber_errors),
        ]


Subscriber = Callable[[FlagChange], None]


class FlagStore(AsyncLifecycle):
    """The migration flags every instance agrees on. ``async with FlagStore(settings) as flags:``"""

    def __init__(self, settings: Settings, *, topic: str = FLAGS_TOPIC, fetch_max_wait_ms: int = 10,
                 principal: Principal = "admin") -> None:
        """``principal``: who this instance is to Kafka (``kafka_client_options``). Changing flags is
        an operator's act (``admin``); a service that only routes by them may run as ``client``,
        which may read the flags topic but not write it."""
        self.settings = settings
        self.topic = topic
        self.principal: Principal = principal
        self.stats = FlagStoreStats()
        self._tp = TopicPartition(topic, 0)
        # fetch_max_wait_ms bounds how long the broker holds an empty fetch: it is the propagation
        # latency floor of a change, so small (the topic is tiny, the extra fetches are cheap).
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._flags = MigrationFlags()
        self._last: FlagChange | None = None
        self._next_offset = 0  # the offset after the last record folded
        self._progress = asyncio.Condition()
        self._subscribers: list[Subscriber] = []

    # --- lifecycle (idempotent) ---------------------------------------------------------------

    async def start(self) -> None:
        if self._consumer is not None:
            return
        await ensure_topics(self.settings, [flags_topic_spec(self.topic)], principal=self.principal)
        consumer = AIOKafkaConsumer(
            **kafka_client_options(self.settings, self.principal), group_id=None, enable_auto_commit=False,
            fetch_max_wait_ms=self._fetch_max_wait_ms, isolation_level="read_committed",
        )
        producer = AIOKafkaProducer(
            **kafka_client_options(self.settings, self.principal), acks="all", enable_idempotence=True, linger_ms=0,
        )
        with translate_kafka_errors(f"starting the flag store on {self.settings.kafka_bootstrap}",
                                    kafka_principal(self.settings, self.principal)):
            await consumer.start()
            try:
                await producer.start()
                # No group: assign the one partition and read it from offset 0, so this instance
                # folds every change ever kept (compaction leaves at least the latest).
                consumer.assign([self._tp])
                await consumer.seek_to_beginning(self._tp)
                end = (await consumer.end_offsets([self._tp]))[self._tp]
            except BaseException:
                await consumer.stop()
                await producer.stop()
                raise
        self._consumer, self._producer = consumer, producer
        self._task = asyncio.create_task(self._run(), name=f"flag-store:{self.topic}")
        # start() returns once everything written before it is folded: current() is then at
        # least as new as the topic was when start() was called.
        await self._wait_for_offset(end, timeout_s=30.0)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        if consumer is not None:
            await consumer.stop()
        if producer is not None:
            await producer.stop()



    # --- reading ------------------------------------------------------------------------------

    def current(self) -> MigrationFlags:
        """The latest flags this instance has folded (no I/O: safe on every routed call)."""
        return self._flags

    @property
    def version(self) -> int:
        """Version of the latest change folded; 0 while no change was ever written."""
        return self._last.version if self._last is not None else 0

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(change)`` on every change folded from now on; returns the unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    async def history(self) -> list[FlagChange]:
        """The changes still on the topic, oldest first (read from offset 0 with a reader of its own).

        Compaction eventually keeps only the latest change; ``audit_trail`` is the durable history.
        """
        reader = AIOKafkaConsumer(
            **kafka_client_options(self.settings, self.principal), group_id=None, enable_auto_commit=False,
            isolation_level="read_committed", fetch_max_wait_ms=self._fetch_max_wait_ms,
        )
        changes: list[FlagChange] = []
        with translate_kafka_errors(f"reading {self.topic}"):
            await reader.start()
            try:
                reader.assign([self._tp])
                await reader.seek_to_beginning(self._tp)
                # Read up to the end offset as of now: records appended meanwhile are the next
                # call's business, and stopping at a fixed offset makes the loop finite.
                end = (await reader.end_offsets([self._tp]))[self._tp]
                while await reader.position(self._tp) < end:
                    batch = await reader.getmany(self._tp, timeout_ms=1000)
                    for rec in batch.get(self._tp, []):
                        if rec.offset < end and rec.value is not None:
                            try:
                                changes.append(FlagChange.from_record(rec.value, rec.offset))
                            except (ValueError, KeyError, TypeError, ValidationError):
                                continue  # counted by the live fold; history lists valid changes only
            finally:
                await reader.stop()
        return changes

    # --- writing ------------------------------------------------------------------------------

    async def update(self, actor: str, **changes: Any) -> MigrationFlags:
        """Change flags (snake_case or the topic's camelCase names) and return the resulting flags.

        Invalid values raise ``ValidationError`` naming the flag, before anything is written.
        When the values equal the current ones nothing is appended. Returns once this instance has
        folded its own change (reads its writes).
        """
        if not isinstance(actor, str) or not actor.strip():
            raise ValidationError("actor", "must be a non-blank string")
        if not changes:
            raise ValidationError("changes", "give at least one flag to change")
        self.current().replace(**changes)  # validate first: fail before any I/O
        producer = self._require_producer()
        conn = await connect(self.settings)
        try:
            with translate_db_errors("recording a flag change"):
                async with conn.transaction():
                    # Ordering: lock, catch up, compute, audit row, append + ack, commit. The lock
                    # is released only by the commit, i.e. after our record is acknowledged, so the
                    # next writer's catch-up includes it (see the module docstring).
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _UPDATE_LOCK)
                    await self._catch_up()
                    before = self.current()
                    after = before.replace(**changes)
                    if after == before:
                        return before
                    old_json, new_json = before.to_json(), after.to_json()
                    diff = [k for k in new_json if new_json[k] != old_json[k]]
                    change = FlagChange(
                        change_id=new_id(), version=self.version + 1, actor=actor, at=datetime.now(UTC),
                        old={k: old_json[k] for k in diff}, new={k: new_json[k] for k in diff}, flags=after,
                    )
                    # The audit row goes in first, inside the transaction: a failed append rolls it
                    # back, so the table never lists a change the log does not hold.
                    await record_audit(conn, AUDIT_OPERATION, actor, {**change.to_json(), "topic": self.topic})
                    with translate_kafka_errors(f"appending a flag change to {self.topic}"):
                        meta = await producer.send_and_wait(
                            self.topic, json.dumps(change.to_json()).encode(), key=FLAGS_KEY, partition=0,
                        )
        finally:
            await conn.close()
        self.stats.updates_written += 1
        await self._wait_for_offset(meta.offset + 1, timeout_s=10.0)
        return self.current()

    # --- the fold -----------------------------------------------------------------------------

    def _require_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("FlagStore is not started: use `async with FlagStore(settings) as flags`")
        return self._producer

    async def _catch_up(self) -> None:
        assert self._consumer is not None
        with translate_kafka_errors(f"reading the end of {self.topic}"):
            end = (await self._consumer.end_offsets([self._tp]))[self._tp]
        await self._wait_for_offset(end, timeout_s=10.0)

    async def _wait_for_offset(self, offset: int, *, timeout_s: float) -> None:
        """Until every record below ``offset`` is folded."""
        async with self._progress:
            try:
                await asyncio.wait_for(self._progress.wait_for(lambda: self._next_offset >= offset), timeout_s)
            except TimeoutError:
                raise KafkaUnavailable(
                    f"flag store: offset {offset} of {self.topic} not read within {timeout_s:g} s "
                    f"(at {self._next_offset})"
                ) from None

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                batch = await consumer.getmany(self._tp, timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker blip: aiokafka reconnects; keep the last flags meanwhile
                log.warning("flag store: fetch failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            records = batch.get(self._tp, [])
            for rec in records:
                self._fold(rec.value, rec.offset)
            # Position, not the last record's offset + 1: compaction leaves offset gaps, and
            # transaction markers occupy offsets no record is returned for.
            position = await consumer.position(self._tp)
            async with self._progress:
                self._next_offset = max(self._next_offset, position)
                self._progress.notify_all()

    def _fold(self, value: bytes | None, offset: int) -> None:
        if value is None:
            return  # a tombstone: nobody deletes flags, but it must not stop the fold
        try:
            change = FlagChange.from_record(value, offset)
        except (ValueError, KeyError, TypeError, ValidationError):
            self.stats.invalid_records += 1
            log.warning("flag store: record %s of %s is not a flag change; skipped", offset, self.topic)
            return
        if store_share(change.flags) < store_share(self._flags):
            self.stats.rollbacks_seen += 1
        self._flags, self._last = change.flags, change
        self.stats.changes_seen += 1
        for callback in list(self._subscribers):
            try:
                callback(change)
            except Exception:
                self.stats.subscriber_errors += 1
                log.exception("flag store: subscriber failed on change %s", change.change_id)


async def audit_trail(settings: Settings, *, limit: int = 1000) -> list[dict[str, JSON]]:
    """The durable flag history: the ``flags_update`` rows of ``public.migration_audit``, oldest first."""
    conn = await connect(settings)
    try:
        with translate_db_errors("reading the flag audit trail"):
            rows = await conn.fetch(
                "SELECT id, actor, details, occurred_at FROM public.migration_audit WHERE operation = $1"
                " ORDER BY id DESC LIMIT $2", AUDIT_OPERATION, limit,
            )
    finally:
        await conn.close()
    return [
        {"id": r["id"], "actor": r["actor"], "details": r["details"], "occurredAt": r["occurred_at"].isoformat()}
        for r in reversed(rows)
    ]
