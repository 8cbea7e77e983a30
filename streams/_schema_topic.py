"""The schemas topic: every writer schema a record of the store may carry, keyed by fingerprint.

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
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from assessment_store.core import Settings
from assessment_store.schemas import AvroRecordCodec, crc64_avro

from ._kafka import Principal, kafka_client_options, schemas_topic, start_kafka_client, translate_kafka_errors

__all__ = ["SchemaResolver", "read_schemas"]

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
    """Makes the writer schemas a reader meets known to its codecs, from the schemas topic."""

    def __init__(self, settings: Settings, principal: Principal, codecs: Iterable[AvroRecordCodec], *,
                 retry_s: float = 5.0) -> None:
        self.settings = settings
        self.principal = principal
        self.codecs = list(codecs)
        self.retry_s = retry_s
        self.lookups = 0
        """reads of the schemas topic (a test checks there is no read per record)"""
        self._missing: dict[str, float] = {}  # fingerprint -> when to look it up again

    @property
    def topic(self) -> str:
        return schemas_topic(self.settings)

    def unknown(self, fingerprints: Iterable[str]) -> set[str]:
        return {fp for fp in fingerprints if not all(c.knows(fp) for c in self.codecs)}

    async def resolve(self, fingerprints: Iterable[str]) -> bool:
        """Read the topic if any of ``fingerprints`` is unknown (and not looked up in vain within
        ``retry_s``); True when something new became known."""
        now = time.monotonic()
        wanted = {fp for fp in self.unknown(fingerprints) if self._missing.get(fp, 0.0) <= now}
        if not wanted:
            return False
        self.lookups += 1
        found = await read_schemas(self.settings, self.principal)
        learned = False
        for fp, text in found.items():
            for codec in self.codecs:
                if not codec.knows(fp):
                    codec.add_writer(text)
                    learned = True
        for fp in wanted - found.keys():
            self._missing[fp] = now + self.retry_s
        for fp in wanted & found.keys():
            self._missing.pop(fp, None)
        if learned:
            log.info("learned writer schema(s) %s from %s", sorted(wanted & found.keys()), schemas_topic(self.settings))
        return learned
