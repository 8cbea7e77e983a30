"""`assessment-store events cat|tail` run as a user runs it, against the session's stack, on topics
of each test's own (events topic, its schemas topic, the legacy DLQ beside its own legacy topic)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from assessment_store import Settings
from assessment_store.core import Completed, Created, Event, Payload, ProgressUpdated, Started
from assessment_store.schemas import EventCodec
from assessment_store.stack import settings_env
from assessment_store.streams import TopicSpec, ensure_topics, kafka_client_options, schemas_topic_spec
from assessment_store.streams.testing import EventProducer

pytestmark = pytest.mark.stack

NOW = datetime.now(UTC).replace(microsecond=0)


def _cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "assessment_store.cli", "events", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def _lifecycle(aid: str, at: datetime = NOW) -> list[Event]:
    payloads: Sequence[Payload] = (Created({"n": aid}), Started("w"), ProgressUpdated(50), Completed({"ok": 1}, 5))
    return [Event(aid, v, p, at, at) for v, p in enumerate(payloads, start=1)]


async def _setup(settings: Settings, events: list[Event], partitions: int = 2) -> Settings:
    name = f"cli-{uuid.uuid4().hex[:10]}"
    s = settings.model_copy(update={"events_topic": f"{name}.events", "legacy_topic": f"{name}.legacy"})
    await ensure_topics(s, [TopicSpec(s.events_topic, partitions, {}), schemas_topic_spec(s),
                            TopicSpec(s.legacy_topic + ".dlq", 1, {})])
    async with EventProducer(s) as producer:
        for ev in events:
            await producer.append(ev)
    return s


def _lines(r: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_cat_json_lines_match_what_was_produced(stack_settings: Settings) -> None:
    """`events cat events --json` prints one parseable object per record with kcat's fields and the decoded event."""
    events = _lifecycle("ec-a") + _lifecycle("ec-b")
    s = asyncio.run(_setup(stack_settings, events))
    docs = _lines(_cli(s, "cat", "events", "--json"))
    assert len(docs) == 8
    got = {(d["key"], d["value"]["version"]): d for d in docs}
    for ev in events:
        d = got[(ev.assessment_id, ev.version)]
        assert d["topic"] == s.events_topic and d["type"] == ev.type.value
        assert d["value"]["event_id"] == ev.event_id and d["value"]["assessment_id"] == ev.assessment_id
        assert d["headers"][d["headers"].index("type") + 1] == ev.type.value
        assert d["timestamp"] == int(ev.recorded_at.timestamp() * 1000)
        assert "error" not in d
    assert got[("ec-a", 4)]["value"]["payload"]["result"] == {"ok": 1}
    human = _cli(s, "cat", s.events_topic)  # the full topic name works too
    assert human.returncode == 0 and len(human.stdout.splitlines()) == 8
    assert any("ec-b AssessmentCompleted v4" in line for line in human.stdout.splitlines())


def test_filters_limit_offset_and_since(stack_settings: Settings) -> None:
    """--type, --assessment, --limit, --offset P:O and --since each narrow what is printed."""
    old = NOW - timedelta(hours=3)
    s = asyncio.run(_setup(stack_settings, _lifecycle("ef-old", old) + _lifecycle("ef-a") + _lifecycle("ef-b"),
                           partitions=1))
    completed = _lines(_cli(s, "cat", "events", "--json", "--type", "AssessmentCompleted", "--type",
                            "AssessmentCreated"))
    assert [(d["key"], d["type"]) for d in completed] == [
        (a, t) for a in ("ef-old", "ef-a", "ef-b") for t in ("AssessmentCreated", "AssessmentCompleted")]
    only_b = _lines(_cli(s, "cat", "events", "--json", "--assessment", "ef-b"))
    assert [d["value"]["version"] for d in only_b] == [1, 2, 3, 4] and {d["key"] for d in only_b} == {"ef-b"}
    assert len(_lines(_cli(s, "cat", "events", "--json", "--limit", "3"))) == 3
    from_offset = _lines(_cli(s, "cat", "events", "--json", "--offset", "0:10"))
    assert [d["offset"] for d in from_offset] == [10, 11]
    since = _lines(_cli(s, "cat", "events", "--json", "--since", "1h"))
    assert {d["key"] for d in since} == {"ef-a", "ef-b"}
    iso = (NOW - timedelta(hours=4)).isoformat()
    assert len(_lines(_cli(s, "cat", "events", "--json", "--since", iso))) == 12


def test_an_undecodable_record_is_shown_not_dropped(stack_settings: Settings) -> None:
    """Corrupt bytes and a non-JSON DLQ record are printed with their base64 and an error, between the good ones."""
    s = asyncio.run(_setup(stack_settings, _lifecycle("eu-a")[:1], partitions=1))
    corrupt = EventCodec().encode(_lifecycle("eu-a")[1])[0][:13]

    async def produce() -> None:
        producer = AIOKafkaProducer(**kafka_client_options(s, "admin"), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(s.events_topic, corrupt, key=b"eu-a", headers=[("type", b"AssessmentStarted")])
            await producer.send_and_wait(s.legacy_topic + ".dlq", b'{"kind": "invalid", "reason": "x"}', key=b"k1")
            await producer.send_and_wait(s.legacy_topic + ".dlq", b"\xff not json", key=b"k2")
        finally:
            await producer.stop()

    asyncio.run(produce())
    docs = _lines(_cli(s, "cat", "events", "--json"))
    assert [d["offset"] for d in docs] == [0, 1]
    bad = docs[1]
    assert bad["value"] is None and base64.b64decode(bad["value_base64"]) == corrupt and bad["error"]
    dlq = _lines(_cli(s, "cat", "dlq", "--json"))
    assert dlq[0]["value"] == {"kind": "invalid", "reason": "x"} and dlq[0]["type"] == "invalid"
    assert base64.b64decode(dlq[1]["value_base64"]) == b"\xff not json" and "error" in dlq[1]
    human = _cli(s, "cat", "dlq")
    assert "UNDECODABLE" in human.stdout.splitlines()[1]


def test_tail_follows_new_records_from_the_end(stack_settings: Settings) -> None:
    """`events tail` prints nothing already there and the records appended after it started."""
    s = asyncio.run(_setup(stack_settings, _lifecycle("et-old")))
    env = {**os.environ, **settings_env(s)}
    proc = subprocess.Popen([sys.executable, "-m", "assessment_store.cli", "events", "tail", "events", "--json",
                             "--limit", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        # tail starts at the end it finds: append until the 4 new records reach it (bounded).
        deadline = time.monotonic() + 60
        batches = 0
        while proc.poll() is None and time.monotonic() < deadline:
            asyncio.run(_append_more(s, f"et-new-{batches}"))
            batches += 1
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                continue
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    keys = {json.loads(line)["key"] for line in out.splitlines()}
    assert len(out.splitlines()) == 4 and "et-old" not in keys


async def _append_more(s: Settings, aid: str) -> None:
    async with EventProducer(s) as producer:
        for ev in _lifecycle(aid):
            await producer.append(ev)


def test_exit_codes_for_usage_and_an_unreachable_broker(stack_settings: Settings) -> None:
    """An unknown topic or a bad option is a usage error (64), a topic not on the broker 69, no broker at all 75."""
    unknown = _cli(stack_settings, "cat", "no-such-topic")
    assert unknown.returncode == 64 and "unknown topic" in unknown.stderr
    both = _cli(stack_settings, "cat", "events", "--from-beginning", "--since", "1h")
    assert both.returncode == 64
    bad_since = _cli(stack_settings, "cat", "events", "--since", "yesterday-ish")
    assert bad_since.returncode == 64
    absent = stack_settings.model_copy(update={"legacy_topic": f"cli-{uuid.uuid4().hex[:10]}.legacy"})
    missing = _cli(absent, "cat", "reverse")
    assert missing.returncode == 69 and "does not exist" in missing.stderr
    nobody = stack_settings.model_copy(update={"bootstrap_servers": "127.0.0.1:1"})
    down = _cli(nobody, "cat", "events", timeout=120)
    assert down.returncode == 75, (down.returncode, down.stderr)
