"""``LegacyBridge``: consumes ``legacy.assessment-events`` and sends store commands.

    async with LegacyBridge(settings) as bridge:
        await bridge.run(stop_event)

Per fetch (up to ``BridgeOptions.max_batch`` records of any partitions):

1. every record is parsed (``_translate.parse_message``); the assessments the view does not know
   and that no earlier message of the batch creates are looked up in the projection, in one
   query, to seed the view (so a restarted bridge does not synthesise a Create for an assessment
   the store already holds);
2. in offset order, each message is planned against the view and becomes commands (queued to
   the commands topic, keyed by assessment id) or a rejection (queued to the dead-letter topic
   with its reason);
3. all those sends are awaited (acks=all), and only then are the batch's offsets committed.

So a committed offset always means its commands and dead letters are durable (at least once); a
crash between 3's acks and its commit re-reads those records, and their deterministic command ids
make the processor answer them as duplicates, appending nothing. Commands for one assessment
stay in order: its legacy records share a partition (the tap keys them by assessment id), are
handled in offset order, and go through one idempotent producer to one command partition.

The bridge never stops on bad input: every record ends up translated or dead-lettered, and is
counted in ``BridgeStats``. Kafka or PostgreSQL failures do stop ``run`` (as ``BackendError``),
with the batch uncommitted, so a restart resumes where it stood.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from assessment_store.core import (
    AsyncLifecycle,
    CommandEnvelope,
    Create,
    DatabaseUnavailable,
    EventSource,
    MetricFamily,
    Settings,
    counter,
    counter_by,
)
from assessment_store.projections import create_pool, fetch_states, translate_db_errors
from assessment_store.streams import Appender, ensure_topics, kafka_client_options, translate_kafka_errors

from ._legacy import LegacyEvent, RejectKind, Rejection
from ._translate import LegacyMessage, LegacyView, TranslateLimits, Translation, parse_message, translate_message

__all__ = ["BridgeOptions", "BridgeStats", "LegacyBridge", "dead_letter_record", "DLQ_HEADER_KIND", "DLQ_HEADER_REASON",
           "DLQ_HEADER_SOURCE"]

log = logging.getLogger("assessment_store.bridge")

DLQ_HEADER_REASON = "dlq-reason"
DLQ_HEADER_KIND = "dlq-kind"
DLQ_HEADER_SOURCE = "dlq-source"
DLQ_PAYLOAD_CAP = 256 * 1024
"""Dead letters carry the original payload up to this many bytes of JSON text; above it a prefix, with
the full size and SHA-256 (the original stays on the legacy topic, which is kept forever, at the
offset the letter names). With the key and header caps below, a dead letter stays under ~600 KB,
well below the broker's default 1 MB record limit: a refused dead letter would stop the bridge."""
DLQ_KEY_CAP = 1024
DLQ_HEADERS_CAP = 64 * 1024


@dataclass(frozen=True, slots=True)
class BridgeOptions:
    group_id: str = "assessment-store-bridge"
    max_message_bytes: int = 1_000_000
    """Larger legacy records are dead-lettered (kind ``too-large``) without being decoded."""
    max_batch: int = 2000
    """Records per fetch; each fetch is one round of sends, acks and a commit."""
    view_capacity: int = 100_000
    """Assessments the bridge remembers for synthesis (least recently used evicted)."""


@dataclass
class BridgeStats:
    """Counters since start; every consumed record is in ``translated`` or ``dead_lettered``."""

    messages: int = 0
    translated: int = 0
    commands_sent: int = 0
    synthesised: int = 0
    """Commands the bridge added for out-of-order input (a Create/Start an orphan needed)."""
    orphans: int = 0
    """Messages for an assessment neither the bridge nor the projection knew, other than a create."""
    dead_lettered: int = 0
    dead_lettered_by_kind: Counter[str] = field(default_factory=Counter)
    view_lookups: int = 0
    """Assessments looked up in the projection to seed the view."""
    view_lookup_failures: int = 0
    """Lookups that failed (PostgreSQL unavailable); those assessments were translated as unknown."""
    batches: int = 0
    commit_failures: int = 0

    def metric_families(self) -> list[MetricFamily]:
        """The Prometheus view of these counters (read at each scrape; docs/monitoring.md, "Metrics")."""
        p = "assessment_store_bridge_"
        return [
            counter(p + "messages_total", "Legacy messages consumed", self.messages),
            counter(p + "messages_translated_total", "Legacy messages translated into commands", self.translated),
            counter_by(p + "messages_dead_lettered_total", "Legacy messages sent to the dead-letter topic, by reason",
                       ["reason"], self.dead_lettered_by_kind),
            counter(p + "commands_sent_total", "Commands the bridge sent", self.commands_sent),
            counter(p + "commands_synthesised_total", "Commands added for out-of-order input", self.synthesised),
            counter(p + "orphans_total", "Messages for an assessment nobody knew, other than a create", self.orphans),
            counter(p + "view_lookups_total", "Assessments looked up in the projection", self.view_lookups),
            counter(p + "view_lookup_failures_total", "Projection lookups that failed", self.view_lookup_failures),
            counter(p + "batches_total", "Batches handled", self.batches),
            counter(p + "commit_failures_total", "Offset commits that failed", self.commit_failures),
        ]

    def as_dict(self) -> dict[str, object]:
        return {
            "messages": self.messages, "translated": self.translated, "commands_sent": self.commands_sent,
            "synthesised": self.synthesised, "orphans": self.orphans, "dead_lettered": self.dead_lettered,
            "dead_lettered_by_kind": dict(self.dead_lettered_by_kind), "view_lookups": self.view_lookups,
            "view_lookup_failures": self.view_lookup_failures,
            "batches": self.batches, "commit_failures": self.commit_failures,
        }

    def __str__(self) -> str:
        return json.dumps(self.as_dict())


def dead_letter_record(
    rec: ConsumerRecord[bytes, bytes], rejection: Rejection, *, at: datetime | None = None
) -> tuple[bytes, bytes | None, list[tuple[str, bytes]]]:
    """The DLQ value (a JSON wrapper), key and headers for a record the bridge cannot translate.

    Bounded whatever the input: the payload is cut to ``DLQ_PAYLOAD_CAP`` (after JSON escaping), a
    key longer than ``DLQ_KEY_CAP`` is replaced by its SHA-256, and the original headers are kept
    only while they total at most ``DLQ_HEADERS_CAP``; the wrapper says what was cut."""
    raw = rec.value or b""
    source = f"{rec.topic}/{rec.partition}/{rec.offset}"
    key = rec.key
    wrapper: dict[str, object] = {
        "kind": rejection.kind.value,
        "field": rejection.field,
        "reason": rejection.reason,
        "source": {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset,
                   "timestamp": rec.timestamp},
        "deadLetteredAt": (at or datetime.now(UTC)).isoformat(),
        "size": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "key": key[:DLQ_KEY_CAP].decode("utf-8", "replace") if key is not None else None,
    }
    if key is not None and len(key) > DLQ_KEY_CAP:
        wrapper["keySize"] = len(key)
        key = b"sha256:" + hashlib.sha256(key).hexdigest().encode()
    truncated = len(raw) > DLQ_PAYLOAD_CAP
    body = raw[:DLQ_PAYLOAD_CAP]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        wrapper["payloadBase64"] = base64.b64encode(body).decode("ascii")
    else:
        # Escaping can grow text up to 6x (control characters): cut until the JSON fits the cap.
        size = len(json.dumps(text))
        while size > DLQ_PAYLOAD_CAP:
            text = text[: max(0, len(text) * DLQ_PAYLOAD_CAP // size - 16)]
            size = len(json.dumps(text))
            truncated = True
        wrapper["payload"] = text
    wrapper["truncated"] = truncated
    kept: list[tuple[str, bytes]] = []
    room = DLQ_HEADERS_CAP
    for k, v in rec.headers:
        room -= len(k) + len(v)
        if room < 0:
            wrapper["headersDropped"] = True
            break
        kept.append((k, v))
    headers = [
        *kept,
        (DLQ_HEADER_REASON, rejection.reason.encode("utf-8", "replace")[:1000]),
        (DLQ_HEADER_KIND, rejection.kind.value.encode()),
        (DLQ_HEADER_SOURCE, source.encode()),
    ]
    return json.dumps(wrapper, ensure_ascii=True).encode("ascii"), key, headers


class LegacyBridge(AsyncLifecycle):
    """The legacy topic's consumer; see the module docstring. Start/stop are idempotent."""

    def __init__(self, settings: Settings, options: BridgeOptions = BridgeOptions(), *,
                 stats: BridgeStats | None = None) -> None:
        """``stats``: counters to continue (a process keeps one across supervised restarts)."""
        self.settings = settings
        self.options = options
        self.stats = stats if stats is not None else BridgeStats()
        self.view = LegacyView(options.view_capacity)
        self.limits = TranslateLimits(options.max_message_bytes, settings.max_request_bytes)
        self.dlq_topic = settings.legacy_topic + ".dlq"
        self._appender = Appender(settings)
        self._consumer: AIOKafkaConsumer | None = None
        self._pool: asyncpg.Pool | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._consumer is not None:
            return
        s = self.settings
        await ensure_topics(s, principal="bridge")  # the legacy topic and its DLQ among them
        pool = await create_pool(s, min_size=1, max_size=2)
        try:
            await self._appender.start()
            consumer = AIOKafkaConsumer(
                s.legacy_topic, **kafka_client_options(s, "bridge"), group_id=self.options.group_id,
                # Commits are manual, after the acks (module docstring, point 3). A new group reads
                # the legacy topic from its beginning: re-reading is harmless (idempotent ids).
                enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=self.options.max_batch,
                fetch_max_wait_ms=s.fetch_max_wait_ms, isolation_level="read_committed",
                max_partition_fetch_bytes=max(1024 * 1024, self.options.max_message_bytes + 1024),
                fetch_max_bytes=max(52428800, self.options.max_message_bytes + 1024),
            )
            with translate_kafka_errors(f"starting the bridge's consumer of {s.legacy_topic}"):
                await consumer.start()
        except BaseException:
            await self._appender.stop()
            await pool.close()
            raise
        self._pool, self._consumer = pool, consumer

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        await self._appender.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()



    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set (a fetch waits at most 100 ms, so stopping is prompt)."""
        await self.start()
        assert self._consumer is not None
        stop = stop or asyncio.Event()
        while not stop.is_set():
            with translate_kafka_errors(f"fetching from {self.settings.legacy_topic}"):
                batches = await self._consumer.getmany(timeout_ms=100)
            if batches:
                await self.handle(batches)

    # --- one fetch ----------------------------------------------------------------------------

    async def handle(self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Translate, send, await the acks, then commit (module docstring)."""
        parsed: list[tuple[ConsumerRecord[bytes, bytes], LegacyMessage | Rejection]] = []
        for records in batches.values():
            for rec in records:
                parsed.append((rec, self._parse(rec)))
        await self._seed_view([m for _, m in parsed if isinstance(m, LegacyMessage)])
        now = datetime.now(UTC)
        for rec, item in parsed:
            self.stats.messages += 1
            result = self._plan(rec, item) if isinstance(item, LegacyMessage) else item
            refused = await self._send(rec, result, now) if isinstance(result, Translation) else result
            if refused is not None:
                await self._dead_letter(rec, refused, now)
        # Offsets are committed only once every command and dead letter of the batch is acked.
        await self._appender.flush()
        self.stats.batches += 1
        await self._commit({tp: records[-1].offset + 1 for tp, records in batches.items() if records})

    def _parse(self, rec: ConsumerRecord[bytes, bytes]) -> LegacyMessage | Rejection:
        try:
            return parse_message(rec.value, self.limits)
        except Exception as e:  # noqa: BLE001 - a bug must not stop the bridge: the record is dead-lettered
            log.exception("translating %s/%d/%d failed", rec.topic, rec.partition, rec.offset)
            return Rejection(RejectKind.INTERNAL_ERROR, None, f"internal error while translating: {e!r}")

    def _plan(self, rec: ConsumerRecord[bytes, bytes], msg: LegacyMessage) -> Translation | Rejection:
        try:
            return translate_message(msg, self.view, self.limits)
        except Exception as e:  # noqa: BLE001 - a bug must not stop the bridge: the record is dead-lettered
            log.exception("planning %s/%d/%d failed", rec.topic, rec.partition, rec.offset)
            return Rejection(RejectKind.INTERNAL_ERROR, None, f"internal error while planning: {e!r}")

    async def _seed_view(self, messages: list[LegacyMessage]) -> None:
        """Look up, in one query, the assessments the view lacks and the batch does not create."""
        created: set[str] = set()
        wanted: set[str] = set()
        for m in messages:
            if m.event is LegacyEvent.CREATED:
                created.add(m.assessment_id)
            elif m.assessment_id not in self.view and m.assessment_id not in created:
                wanted.add(m.assessment_id)
        if not wanted:
            return
        assert self._pool is not None
        self.stats.view_lookups += len(wanted)
        try:
            with translate_db_errors("looking up assessments for the bridge's view"):
                states = await fetch_states(self._pool, list(wanted))
        except DatabaseUnavailable as e:
            # The view is only a hint: without it the bridge may synthesise a Create or Start the store
            # then refuses (listed by bridge_rejections), never a wrong event. Ingest goes on without
            # PostgreSQL, counted.
            self.stats.view_lookup_failures += 1
            log.warning("view lookup failed, translating %d assessments as unknown: %s", len(wanted), e)
            return
        for assessment_id, state in states.items():
            self.view.seed(assessment_id, state)

    async def _send(self, rec: ConsumerRecord[bytes, bytes], t: Translation, now: datetime) -> Rejection | None:
        """Queue the translation's commands; a Rejection (to dead-letter) if any of them cannot be encoded."""
        # The legacy emission's time becomes the events' occurred_at (recorded_at stays the
        # processor's clock): time as the legacy system lived it, for every command of the message.
        envelopes = [CommandEnvelope(c, now, EventSource.LEGACY_BRIDGE, t.message.occurred_at) for c in t.commands]
        try:
            # All encoded before any is queued: a message is sent whole or dead-lettered whole.
            encoded = [self._appender.encode(env) for env in envelopes]
        except Exception as e:  # noqa: BLE001 - one message must not stop the bridge: it is dead-lettered, logged
            # validate_command should refuse anything the encoder cannot take; this is the net under it. The
            # view already counts these commands as sent: it is a hint, and at worst the store refuses a later
            # synthesised step (listed by bridge_rejections).
            log.exception("encoding the commands of %s/%d/%d failed", rec.topic, rec.partition, rec.offset)
            return Rejection(RejectKind.UNENCODABLE, None,
                             f"cannot be encoded as a store command: {type(e).__name__}: {e}")
        for env, enc in zip(envelopes, encoded):
            await self._appender.command(env, enc)
        if t.message.event is not LegacyEvent.CREATED and isinstance(t.commands[0], Create):
            self.stats.orphans += 1
        self.stats.translated += 1
        self.stats.commands_sent += len(t.commands)
        self.stats.synthesised += t.synthesised
        return None

    async def _dead_letter(self, rec: ConsumerRecord[bytes, bytes], rejection: Rejection, now: datetime) -> None:
        value, key, headers = dead_letter_record(rec, rejection, at=now)
        await self._appender.record(self.dlq_topic, value, key, headers)
        self.stats.dead_lettered += 1
        self.stats.dead_lettered_by_kind[rejection.kind.value] += 1
        log.warning("dead-lettered %s/%d/%d: %s", rec.topic, rec.partition, rec.offset, rejection.reason)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        try:
            await self._consumer.commit(offsets)
        except KafkaError as e:
            # Safe to lose (and counted): the partition's next owner re-reads these records, and
            # their deterministic command ids make every re-sent command a no-op duplicate.
            self.stats.commit_failures += 1
            log.warning("commit of %s failed (%s); those records will be read again", offsets, e)
