"""Where the bridge's refusals can be inspected.

* ``dead_letters``: records of the legacy topic the bridge could not translate, from
  ``legacy.assessment-events.dlq`` (reason in the ``dlq-reason`` header and in the JSON wrapper).
* ``bridge_rejections``: commands the bridge or the import sent and the command processor refused
  (out-of-order input such as progress after completion), from ``projection.command_outcomes``;
  their command ids start with ``legacy:`` (bridge) or ``legacy-import:`` (import).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from assessment_store.core import JSON, Settings
from assessment_store.projections import connection, fetch_rejections, translate_db_errors
from assessment_store.streams import kafka_client_options, translate_kafka_errors

from ._snapshot import IMPORT_ID_PREFIX
from ._translate import COMMAND_ID_PREFIX

__all__ = ["BridgeRejection", "DeadLetter", "bridge_rejections", "dead_letters"]


@dataclass(frozen=True, slots=True)
class BridgeRejection:
    command_id: str
    assessment_id: str
    origin: str
    """``bridge`` (live legacy messages) or ``import`` (snapshot import)."""
    error_type: str | None
    error_message: str | None
    error_details: dict[str, JSON] | None
    processed_at: datetime
    command_offset: int


async def bridge_rejections(
    settings: Settings, *, limit: int = 1000, assessment_id: str | None = None
) -> list[BridgeRejection]:
    """Commands of the bridge and of the import that the processor refused, oldest first."""
    async with connection(settings) as conn:
        with translate_db_errors("reading the bridge's rejected commands"):
            refused = await fetch_rejections(conn, command_id_prefixes=(COMMAND_ID_PREFIX, IMPORT_ID_PREFIX),
                                             assessment_id=assessment_id, limit=limit)
    return [
        BridgeRejection(
            command_id=o.command_id, assessment_id=o.assessment_id,
            origin="import" if o.command_id.startswith(IMPORT_ID_PREFIX) else "bridge",
            error_type=o.error_type, error_message=o.error_message, error_details=o.error_details,
            processed_at=o.processed_at, command_offset=o.command_offset,
        )
        for o in refused
    ]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp_ms: int
    kind: str
    reason: str
    source: str
    """``topic/partition/offset`` of the original record on the legacy topic."""
    wrapper: dict[str, Any]
    """The whole JSON wrapper: reason, source, size, sha256 and the payload (or its prefix)."""


def _header(headers: Any, name: str) -> str:
    value = next((v for k, v in headers if k == name), None)
    return value.decode("utf-8", "replace") if value is not None else ""


async def dead_letters(settings: Settings, *, limit: int = 100, topic: str | None = None) -> list[DeadLetter]:
    """The last ``limit`` dead letters of each partition of the bridge's DLQ, oldest first."""
    topic = topic or settings.legacy_topic + ".dlq"
    reader = AIOKafkaConsumer(**kafka_client_options(settings, "dashboard"), group_id=None, enable_auto_commit=False)
    found: list[DeadLetter] = []
    with translate_kafka_errors(f"reading {topic}"):
        await reader.start()
        try:
            partitions = reader.partitions_for_topic(topic)
            if not partitions:
                await reader._client.force_metadata_update()  # first metadata may predate the topic
                partitions = reader.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            if not tps:
                return []
            reader.assign(tps)
            starts = await reader.beginning_offsets(tps)
            ends = await reader.end_offsets(tps)
            for tp in tps:
                reader.seek(tp, max(starts[tp], ends[tp] - limit))
            remaining = {tp for tp in tps if await reader.position(tp) < ends[tp]}
            while remaining:
                for tp, recs in (await reader.getmany(*remaining, timeout_ms=1000)).items():
                    for rec in recs:
                        if rec.offset >= ends[tp]:
                            continue
                        try:
                            wrapper: dict[str, Any] = json.loads(rec.value or b"{}")
                        except ValueError as e:
                            wrapper = {"unreadable": str(e)}
                        found.append(DeadLetter(
                            partition=tp.partition, offset=rec.offset, timestamp_ms=rec.timestamp,
                            kind=_header(rec.headers, "dlq-kind"), reason=_header(rec.headers, "dlq-reason"),
                            source=_header(rec.headers, "dlq-source"), wrapper=wrapper,
                        ))
                for tp in list(remaining):
                    if await reader.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await reader.stop()
    return sorted(found, key=lambda d: (d.timestamp_ms, d.partition, d.offset))
