"""Reverse sync (``bridge.ReverseSync``) against the session's real stack: store-created assessments reach the reverse topic."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from datetime import UTC, datetime, timedelta

from assessment_store import Settings
from assessment_store._domain import decide, evolve
from assessment_store._model import Assessment, Command, Complete, Create, Start, UpdateProgress
from assessment_store.testing import eventually
from bridge import FlagStore, ReverseSync
from streams import EventProducer, TopicSpec, ensure_topics

pytestmark = pytest.mark.stack


async def _read_all(settings: Settings, topic: str) -> list[dict[str, Any]]:
    reader = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                              auto_offset_reset="earliest", enable_auto_commit=False)
    await reader.start()
    try:
        out: list[dict[str, Any]] = []
        for records in (await reader.getmany(timeout_ms=500, max_records=100_000)).values():
            out.extend(json.loads(r.value) for r in records)
        return out
    finally:
        await reader.stop()


async def test_store_created_lifecycle_is_emitted_in_legacy_format_idempotently(stack_settings: Settings) -> None:
    """In dual mode a store-created lifecycle becomes created/started/progress/completed legacy messages, re-emitted identically."""
    topic = f"test.reverse.{uuid.uuid4().hex[:8]}"
    # An events topic of its own: a reverse-sync group reads from offset 0, and the session's log
    # holds hundreds of thousands of events by the time this runs.
    events = f"test.reverse-events.{uuid.uuid4().hex[:8]}"
    s = stack_settings.model_copy(update={"events_topic": events})
    await ensure_topics(s, [TopicSpec(events, s.partitions, {})])
    async with FlagStore(stack_settings, topic=f"test.reverse-flags.{uuid.uuid4().hex[:8]}") as flags:
        await flags.update("test", enable_assessment_store=True, enable_dual_mode=True, migration_percentage=30)
        aid = f"rev-{uuid.uuid4().hex[:8]}"
        t0 = datetime.now(UTC)
        commands: list[Command] = [Create(assessment_id=aid, request={"who": "rev"}), Start(assessment_id=aid),
                    UpdateProgress(assessment_id=aid, progress=60, message="scoring"),
                    Complete(assessment_id=aid, result={"score": 7}, duration_ms=5)]
        state: Assessment | None = None
        async with EventProducer(s) as producer:
            for i, cmd in enumerate(commands):
                event = decide(state, cmd, t0 + timedelta(milliseconds=i))
                state = evolve(state, event)
                await producer.append(event)

        async def run_once(group: str) -> list[dict[str, Any]]:
            stop = asyncio.Event()
            sync = ReverseSync(s, flags, group_id=group, topic=topic)
            task = asyncio.create_task(sync.run(stop))
            try:
                return await eventually(
                    lambda: _read_all(s, topic),
                    lambda ms: sum(m["data"]["assessmentId"] == aid for m in ms) >= 4 * (2 if group.endswith("b") else 1),
                    timeout_s=60, what="reverse-synced messages")
            finally:
                stop.set()
                await task

        first = [m for m in await run_once(f"rev-{uuid.uuid4().hex[:6]}-a") if m["data"]["assessmentId"] == aid]
        assert [m["event"] for m in first] == ["assessment.created", "assessment.started", "assessment.progress",
                                              "assessment.completed"]
        assert [m["seq"] for m in first] == [1, 2, 3, 4]
        assert {m["emitter"] for m in first} == {"assessment-store-reverse"}
        assert first[0]["data"]["request"] == {"who": "rev"} and first[3]["data"]["result"] == {"score": 7}
        assert [m["reverseId"] for m in first] == [f"{aid}:{v}" for v in (1, 2, 3, 4)]
        # A second group re-reads the log: identical messages, so the legacy side dedupes on reverseId.
        both = [m for m in await run_once(f"rev-{uuid.uuid4().hex[:6]}-b") if m["data"]["assessmentId"] == aid]
        assert both[4:] == first
