"""The schemas topic: every writer schema a record of the store may carry, keyed by fingerprint;
``SchemaResolver``, which finds a writer schema there or, by id, in the schema registry; and
``PartitionStops``, what every reader does with a record it still cannot resolve.

A writer publishes the exact schema it writes with (key: the fingerprint in hex, value: the
schema's JSON) before its first record, once per process; the topic is compacted, so
re-publishing the same key is harmless and the topic keeps one record per schema. A reader that
meets a fingerprint it does not know reads the topic (a small one: a record per schema version)
and resolves the writer schema into the one it knows; a fingerprint still unknown after that is
looked up again only after ``retry_s``, never once per record (docs/events.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from assessment_store.core import SchemaRegistryUnavailable, Settings, UnresolvableSchema
from assessment_store.schemas import REGISTRY_REF_PREFIX, AvroRecordCodec, crc64_avro, writer_ref

from ._kafka import Principal, kafka_client_options, schemas_topic, start_kafka_client, translate_kafka_errors
from ._registry import SchemaRegistryClient

__all__ = ["PartitionStops", "SchemaResolver", "read_schemas"]

log = logging.getLogger("assessment_store.schemas")

async def read_schemas(settings: Settings, principal: Principal) -> dict[str, str]:
    """Every schema on the topic: fingerprint -> schema JSON (records whose key is not the
    fingerprint of their value are ignored, with a warning)."""
    topic = schemas_topic(settings)
    consumer = AIOKafkaConsumer(**kafka_client_options(settings, principal), group_id=None, enable_auto_commit=False)
    await start_kafka_client(consumer, settings, principal, f"reading {topic}")
    schemas: dict[str, str] = {}
    try:
        with translate_kafka_errors(f"reading {topic}"):
            tps = [TopicPartition(topic, 0)]  # created with one partition (schemas_topic_spec)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(*tps, timeout_ms=1000)
                for recs in batch.values():
                    for rec in recs:
                        if rec.key is None or rec.value is None:
                            continue
                        fp, text = rec.key.decode("ascii", "replace"), rec.value.decode("utf-8", "replace")
                        if not _matches(fp, text):
                            log.warning("ignoring %s/%d/%d: key %s is not the fingerprint of its schema",
                                        rec.topic, rec.partition, rec.offset, fp)
                            continue
                        schemas[fp] = text
    finally:
        await consumer.stop()
    return schemas


def _matches(fp: str, text: str) -> bool:
    from fastavro import parse_schema
    from fastavro.schema import to_parsing_canonical_form
    try:
        canonical = to_parsing_canonical_form(parse_schema(json.loads(text)))
    except Exception:  # noqa: BLE001 - anything unparsable is simply not a schema
        return False
    return crc64_avro(canonical.encode()).to_bytes(8, "little").hex() == fp


class SchemaResolver:
    """Makes the writer schemas a reader meets known to its codecs: fingerprints from the schemas
    topic, registry ids (``id:<n>``) from the schema registry when one is configured."""

    def __init__(self, settings: Settings, principal: Principal, codecs: Iterable[AvroRecordCodec], *,
                 retry_s: float = 5.0, registry: SchemaRegistryClient | None = None) -> None:
        self.settings = settings
        self.principal = principal
        self.codecs = list(codecs)
        self.retry_s = retry_s
        self.registry = registry
        if registry is None and settings.schema_registry_url is not None:
            self.registry = SchemaRegistryClient(settings)
        self.lookups = 0
        """reads of the schemas topic (a test checks there is no read per record)"""
        self.registry_lookups = 0
        """schema ids fetched from the registry (likewise)"""
        self._missing: dict[str, float] = {}  # reference -> when to look it up again

    @property
    def topic(self) -> str:
        return schemas_topic(self.settings)

    def where(self) -> str:
        """Where a missing writer schema must be published, for the operator."""
        if self.registry is not None:
            return f"{self.topic} (fingerprints) or the schema registry {self.registry.url} (ids)"
        return f"{self.topic} (fingerprints; records naming a registry id need ASSESSMENT_STORE_SCHEMA_REGISTRY_URL)"

    def unknown(self, refs: Iterable[str]) -> set[str]:
        return {ref for ref in refs if not all(c.knows(ref) for c in self.codecs)}

    async def learn(self, records: Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]) -> bool:
        """Look up the writer schemas of ``records`` the codecs do not know: one read of the schemas
        topic for the whole batch, one registry request per unknown id, none when all are known."""
        refs = {ref for recs in records.values() for r in recs if (ref := writer_ref(r.value, r.headers)) is not None}
        if not self.unknown(refs):
            return False
        return await self.resolve(refs)

    async def resolve(self, refs: Iterable[str]) -> bool:
        """Look up the references among ``refs`` that are unknown (and not looked up in vain within
        ``retry_s``); True when something new became known. A registry that does not answer is
        logged and retried like a missing schema: the records wait (``UnresolvableSchema``), none
        is skipped."""
        now = time.monotonic()
        wanted = {ref for ref in self.unknown(refs) if self._missing.get(ref, 0.0) <= now}
        if not wanted:
            return False
        ids = {ref for ref in wanted if ref.startswith(REGISTRY_REF_PREFIX)}
        learned = False
        found: set[str] = set()
        if wanted - ids:
            learned |= await self._from_topic(wanted - ids, found)
        if ids:
            learned |= await self._from_registry(ids, found)
        for ref in wanted - found:
            self._missing[ref] = now + self.retry_s
        for ref in found:
            self._missing.pop(ref, None)
        if found:
            log.info("learned writer schema(s) %s", sorted(found))
        return learned

    async def _from_topic(self, wanted: set[str], found: set[str]) -> bool:
        self.lookups += 1
        schemas = await read_schemas(self.settings, self.principal)
        learned = False
        for fp, text in schemas.items():
            for codec in self.codecs:
                if not codec.knows(fp):
                    codec.add_writer(text)
                    learned = True
        found |= wanted & schemas.keys()
        return learned

    async def _from_registry(self, ids: set[str], found: set[str]) -> bool:
        if self.registry is None:
            return False  # stays unknown: UnresolvableSchema names the reference
        learned = False
        for ref in sorted(ids):
            schema_id = int(ref[len(REGISTRY_REF_PREFIX):])
            self.registry_lookups += 1
            try:
                text = await self.registry.schema_by_id(schema_id)
            except SchemaRegistryUnavailable as e:
                log.warning("cannot look up writer schema id %d: %s (asked again in %g s)", schema_id, e, self.retry_s)
                continue
            if text is None:
                continue
            try:
                for codec in self.codecs:
                    if not codec.knows(ref):
                        codec.add_writer(text, schema_id)
                        learned = True
            except (ValueError, TypeError, KeyError) as e:  # fastavro's SchemaParseException is a ValueError
                log.warning("schema id %d from %s is not an Avro schema: %s", schema_id, self.registry.url, e)
                continue
            found.add(ref)
        return learned


class PartitionStops:
    """Partitions a reader stopped at a record whose writer schema it cannot resolve: never skipped,
    read again from that record after ``retry_s`` (docs/events.md, "A record that cannot be resolved is
    never skipped"). Each stop is logged at ERROR and counted; the caller keeps the partition from
    moving past the record (for a consumer: seek back to it and pause it, ``stop_consumer``) and asks
    ``due`` for the partitions to read again."""

    def __init__(self, reader: str, resolver: SchemaResolver, retry_s: float = 5.0) -> None:
        self.reader = reader
        self.resolver = resolver
        self.retry_s = retry_s
        self.stopped = 0
        """stops so far (the reader's ``..._unresolvable_schema_total`` counter)"""
        self._until: dict[TopicPartition, float] = {}

    def stop(self, tp: TopicPartition, error: UnresolvableSchema) -> None:
        self.stopped += 1
        self._until[tp] = time.monotonic() + self.retry_s
        log.error("UNRESOLVABLE SCHEMA (%s): %s; partition %s stops here (nothing skipped) and is read again in "
                  "%g s; publish the writer schema to %s", self.reader, error, tp, self.retry_s, self.resolver.where())

    def stop_consumer(self, consumer: AIOKafkaConsumer, tp: TopicPartition, error: UnresolvableSchema) -> None:
        """``stop``, for a reader whose position is the consumer's: back to the record, paused."""
        self.stop(tp, error)
        assert error.offset is not None
        if tp in consumer.assignment():
            consumer.seek(tp, error.offset)
            consumer.pause(tp)

    def waiting(self, tp: TopicPartition) -> bool:
        return self._until.get(tp, 0.0) > time.monotonic()

    def due(self) -> list[TopicPartition]:
        """Partitions whose wait is over (forgotten here: the caller reads them again)."""
        now = time.monotonic()
        ready = [tp for tp, until in self._until.items() if until <= now]
        for tp in ready:
            del self._until[tp]
        return ready

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions no longer this reader's (revoked): their next owner starts from the record again."""
        for tp in tps:
            self._until.pop(tp, None)
