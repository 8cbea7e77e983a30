"""Reverse sync (``bridge.ReverseSync``) against the session's real stack: store-created assessments reach the reverse topic."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from datetime import UTC, datetime, timedelta

from assessment_store import Settings
from assessment_store.core import (
    Assessment,
    Command,
    Complete,
    Create,
    EventSource,
    Start,
    UpdateProgress,
    decide,
    evolve,
)
from assessment_store.testing import eventually, produce_lifecycles, topic_end_offsets
from assessment_store.migration import ReverseSync, reverse_topic_spec
from assessment_store.stack import Stack, settings_env
from assessment_store.streams import TopicSpec, ensure_topics, schemas_topic_spec
from assessment_store.streams.testing import EventProducer

pytestmark = pytest.mark.stack


async def _read_all(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Every record of ``topic`` up to its current end, in order per partition."""
    ends = await topic_end_offsets(settings, topic)
    reader = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                              auto_offset_reset="earliest", enable_auto_commit=False)
    await reader.start()
    try:
        out: dict[int, list[dict[str, Any]]] = {p: [] for p in ends}
        seen = {p: 0 for p in ends}
        while any(seen[p] < end for p, end in ends.items()):
            for tp, records in (await reader.getmany(timeout_ms=500, max_records=50_000)).items():
                for r in records:
                    if r.offset < ends[tp.partition]:
                        out[tp.partition].append(json.loads(r.value))
                    seen[tp.partition] = r.offset + 1
        return [m for p in sorted(out) for m in out[p]]
    finally:
        await reader.stop()


async def test_store_written_events_are_emitted_in_legacy_format_idempotently(stack_settings: Settings) -> None:
    """Events with source store become legacy messages (legacy-bridge ones never), and a re-read emits identical copies."""
    topic = f"test.reverse.{uuid.uuid4().hex[:8]}"
    # An events topic of its own: a reverse-sync group reads from offset 0, and the session's log
    # holds hundreds of thousands of events by the time this runs.
    events = f"test.reverse-events.{uuid.uuid4().hex[:8]}"
    s = stack_settings.model_copy(update={"events_topic": events})
    # The writer schemas go beside the events topic (every writer publishes there before its first record).
    await ensure_topics(s, [TopicSpec(events, s.partitions, {}), schemas_topic_spec(s)])
    aid = f"rev-{uuid.uuid4().hex[:8]}"
    # Born on legacy (carried in by the bridge), then completed through the store after a rollout step.
    lid = f"rev-legacy-{uuid.uuid4().hex[:8]}"
    t0 = datetime.now(UTC)
    writes: list[tuple[Command, EventSource]] = [
        (Create(assessment_id=aid, request={"who": "rev"}), EventSource.STORE),
        (Start(assessment_id=aid), EventSource.STORE),
        (UpdateProgress(assessment_id=aid, progress=60, message="scoring"), EventSource.STORE),
        (Complete(assessment_id=aid, result={"score": 7}, duration_ms=5), EventSource.STORE),
        (Create(assessment_id=lid, request={"who": "legacy"}), EventSource.LEGACY_BRIDGE),
        (Start(assessment_id=lid), EventSource.LEGACY_BRIDGE),
        (Complete(assessment_id=lid, result={"score": 1}, duration_ms=9), EventSource.STORE),
    ]
    states: dict[str, Assessment | None] = {aid: None, lid: None}
    async with EventProducer(s) as producer:
        for i, (cmd, source) in enumerate(writes):
            event = decide(states[cmd.assessment_id], cmd, t0 + timedelta(milliseconds=i), source=source)
            states[cmd.assessment_id] = evolve(states[cmd.assessment_id], event)
            await producer.append(event)

    async def run_once(group: str, copies: int) -> tuple[list[dict[str, Any]], ReverseSync]:
        stop = asyncio.Event()
        async with ReverseSync(s, group_id=group, topic=topic) as sync:
            task = asyncio.create_task(sync.run(stop))
            try:
                return await eventually(
                    lambda: _read_all(s, topic),
                    lambda ms: len(ms) >= 5 * copies and sync.stats.events >= 7,
                    timeout_s=60, what="reverse-synced messages"), sync
            finally:
                stop.set()
                await task

    got, sync = await run_once(f"rev-{uuid.uuid4().hex[:6]}-a", 1)
    first = [m for m in got if m["data"]["assessmentId"] == aid]
    assert [m["event"] for m in first] == ["assessment.created", "assessment.started", "assessment.progress",
                                          "assessment.completed"]
    assert [m["seq"] for m in first] == [1, 2, 3, 4]
    assert {m["emitter"] for m in first} == {"assessment-store-reverse"}
    assert first[0]["data"]["request"] == {"who": "rev"} and first[3]["data"]["result"] == {"score": 7}
    assert [m["reverseId"] for m in first] == [f"{aid}:{v}" for v in (1, 2, 3, 4)]
    # Of the legacy-born assessment only the store's own change goes back: legacy has the rest.
    legacy_born = [m for m in got if m["data"]["assessmentId"] == lid]
    assert [(m["event"], m["seq"], m["data"]["result"]) for m in legacy_born] == [("assessment.completed", 3, {"score": 1})]
    assert (sync.stats.emitted, sync.stats.skipped_not_store) == (5, 2)
    # A second group re-reads the log: identical messages, so the legacy side dedupes on seq.
    both, _ = await run_once(f"rev-{uuid.uuid4().hex[:6]}-b", 2)
    assert [m for m in both if m["data"]["assessmentId"] == aid][4:] == first
    assert [m for m in both if m["data"]["assessmentId"] == lid][1:] == legacy_born


def _stack(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.run([sys.executable, "-m", "assessment_store.cli", "stack", *args], capture_output=True, text=True,
                          env=env, timeout=120)


async def test_reverse_sync_killed_mid_stream_loses_nothing(stack_settings: Settings) -> None:
    """kill -9 of the reverse-sync service mid-stream, then a restart: every store event reaches the reverse topic, and
    applying only seq above the last applied (the legacy rule) yields each assessment's versions 1..4 exactly once."""
    run = uuid.uuid4().hex[:8]
    s = stack_settings.model_copy(update={"events_topic": f"test.rs-crash-events.{run}",
                                          "reverse_topic": f"test.rs-crash.{run}",
                                          "reverse_sync_group": f"rs-crash-{run}"})
    await ensure_topics(s, [TopicSpec(s.events_topic, s.partitions, {}), schemas_topic_spec(s),
                            reverse_topic_spec(s)])
    count = 20_000
    total = await produce_lifecycles(s, count, prefix=f"rs-crash-{run}")

    async def emitted() -> int:
        return sum((await topic_end_offsets(s, s.legacy_reverse_topic)).values())

    assert _stack(s, "up", "reverse-sync").returncode == 0
    try:
        await eventually(emitted, lambda n: n >= total // 10, timeout_s=60, what="the reverse sync under way")
        pid = Stack(s).reverse_sync.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        at_kill = await emitted()
        assert at_kill < total, "finished before the kill: nothing was tested"
        await eventually(lambda: _value(Stack(s).reverse_sync.pid()), lambda p: p is None, what="the service gone")
        assert _stack(s, "up", "reverse-sync").returncode == 0
        await eventually(emitted, lambda n: n >= total, timeout_s=120, what="the restarted sync at the end")
        got = await eventually(
            lambda: _read_all(s, s.legacy_reverse_topic),
            lambda ms: len({m["reverseId"] for m in ms}) == total, timeout_s=120, what="every event re-emitted")
    finally:
        assert _stack(s, "down", "reverse-sync").returncode == 0
    applied: dict[str, list[int]] = {}
    for m in got:  # in topic order per partition; one assessment lives on one partition
        seqs = applied.setdefault(m["data"]["assessmentId"], [])
        if m["seq"] > (seqs[-1] if seqs else 0):
            seqs.append(m["seq"])
    assert len(applied) == count and all(seqs == [1, 2, 3, 4] for seqs in applied.values())
    # Re-emissions after the kill are expected (committed only after the acks); count them for the record.
    assert len(got) >= total


async def _value(x: Any) -> Any:
    return x
