"""The legacy bridge and the snapshot import against the session's real Kafka, PostgreSQL, processor and projector."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from assessment_store import CommandTimeout, Settings
from assessment_store.testing import eventually, topic_end_offsets
from assessment_store.bridge import (
    BridgeOptions,
    ImportReport,
    LegacyBridge,
    bridge_rejections,
    dead_letters,
    import_legacy,
)
from assessment_store.bridge._import import rejected_path
from assessment_store.projections import connect
from assessment_store.stack import settings_env
from assessment_store.streams import ensure_topics

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent


# --- helpers -----------------------------------------------------------------------------------------

def _legacy(event: str, aid: str, seq: int, *, emitter: str = "tap-test", at: str = "2024-05-01T12:00:00.000Z",
            **data: Any) -> bytes:
    """A legacy record exactly as the Node tap writes it."""
    status = {"created": "pending", "started": "processing", "progress": "processing", "completed": "completed",
              "failed": "failed", "cancelled": "cancelled"}[event]
    body = {"assessmentId": aid, "status": status, **data}
    return json.dumps({"event": f"assessment.{event}", "data": body, "emittedAt": at, "seq": seq,
                       "emitter": emitter}).encode()


async def _produce(settings: Settings, records: list[tuple[bytes | None, bytes]]) -> list[tuple[int, int]]:
    """Write (key, value) records to the legacy topic in order; returns their (partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True,
                                max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(settings.legacy_topic, v, key=k) for k, v in records]
        return [(m.partition, m.offset) for m in await asyncio.gather(*futures)]
    finally:
        await producer.stop()


async def _group_caught_up(settings: Settings, group: str, topic: str) -> bool:
    """Whether ``group`` has committed the end offset of every partition of ``topic``."""
    ends = await topic_end_offsets(settings, topic)
    reader = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        for partition, end in ends.items():
            if (await reader.committed(TopicPartition(topic, partition)) or 0) < end:
                return False
        return True
    finally:
        await reader.stop()


async def _projector_caught_up(settings: Settings) -> bool:
    conn = await connect(settings)
    try:
        rows = await conn.fetch("SELECT topic, partition, next_offset FROM projection.projector_offsets"
                                " WHERE consumer_group = $1", settings.projector_group)
    finally:
        await conn.close()
    done = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
    for topic in (settings.events_topic, settings.outcomes_topic):
        for partition, end in (await topic_end_offsets(settings, topic)).items():
            if end > 0 and done.get((topic, partition), 0) < end:
                return False
    return True


async def _quiescent(settings: Settings, what: str) -> None:
    """Wait until the processor has handled every command and the projector folded everything."""
    async def probe() -> bool:
        return await _group_caught_up(settings, settings.processor_group, settings.commands_topic) and (
            await _projector_caught_up(settings))
    await eventually(probe, bool, timeout_s=60, what=what)


async def _histories(settings: Settings, ids: list[str]) -> dict[str, list[tuple[int, str, str, str]]]:
    conn = await connect(settings)
    try:
        rows = await conn.fetch(
            "SELECT assessment_id, version, type, source, causation_id FROM projection.assessment_events"
            " WHERE assessment_id = ANY($1::text[]) ORDER BY assessment_id, version", ids)
    finally:
        await conn.close()
    out: dict[str, list[tuple[int, str, str, str]]] = {aid: [] for aid in ids}
    for r in rows:
        out[r["assessment_id"]].append((r["version"], r["type"], r["source"], r["causation_id"]))
    return out


async def _states(settings: Settings, ids: list[str]) -> dict[str, dict[str, Any]]:
    conn = await connect(settings)
    try:
        rows = await conn.fetch(
            "SELECT assessment_id, state, version, progress, message, request_data, result_data, error_message,"
            " duration_ms, created_at, updated_at FROM projection.assessments WHERE assessment_id = ANY($1::text[])", ids)
    finally:
        await conn.close()
    return {r["assessment_id"]: dict(r) for r in rows}


@dataclass
class RunningBridge:
    bridge: LegacyBridge
    task: asyncio.Task[None]
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)
        await self.bridge.stop()


async def _start_bridge(settings: Settings, options: BridgeOptions) -> RunningBridge:
    bridge = LegacyBridge(settings, options)
    await bridge.start()
    stop = asyncio.Event()
    return RunningBridge(bridge, asyncio.create_task(bridge.run(stop)), stop)


async def test_bridge_start_and_stop_are_idempotent(stack_settings: Settings) -> None:
    """start() twice, stop() twice and `async with` leave no error and no running consumer."""
    bridge = LegacyBridge(stack_settings, BridgeOptions(group_id=f"bridge-idem-{uuid.uuid4().hex[:8]}"))
    await bridge.start()
    await bridge.start()
    await bridge.stop()
    await bridge.stop()
    async with bridge as same:
        assert same is bridge
    await bridge.stop()


# --- (a) the corpus of bad legacy input -----------------------------------------------------------------

@dataclass
class Corpus:
    settings: Settings
    ids: dict[str, str]
    records: list[tuple[bytes | None, bytes]]
    positions: list[tuple[int, int]]
    expected_dead: Counter[str]
    bad_positions: dict[tuple[int, int], str]
    run: RunningBridge
    options: BridgeOptions


def _corpus(ids: dict[str, str]) -> tuple[list[tuple[bytes | None, bytes]], dict[int, str]]:
    """The records, and the index of each one that must be dead-lettered with its kind."""
    a, b, c, d, f = ids["a"], ids["b"], ids["c"], ids["d"], ids["f"]
    completed_a = _legacy("completed", a, 4, result={"score": 9}, duration=1500)
    good: list[tuple[str, bytes]] = [
        # A: a normal lifecycle ...
        (a, _legacy("created", a, 1, request={"subject": "alice"})),
        (a, _legacy("started", a, 2)),
        (a, _legacy("progress", a, 3, progress=50, message="half")),
        (a, completed_a),
        # ... a re-delivery (same bytes: the tap retried after an ambiguous failure) ...
        (a, completed_a),
        # ... a duplicate emission (same event again under a new seq) ...
        (a, _legacy("created", a, 5, request={"subject": "alice"})),
        # ... and progress after completion (late).
        (a, _legacy("progress", a, 6, progress=70, message="late")),
        # B: out of order: its completion arrives before its creation and start.
        (b, _legacy("completed", b, 12, result={"score": 1}, request={"subject": "bob"})),
        (b, _legacy("created", b, 10, request={"subject": "bob"})),
        (b, _legacy("started", b, 11)),
        # C and D: orphans (never created, never started).
        (c, _legacy("failed", c, 20, error="scorer crashed")),
        (d, _legacy("cancelled", d, 21)),
        # A restarted tap: seq 1 again under the same emitter id, another emittedAt.
        (f, _legacy("created", f, 1, at="2024-05-01T13:00:00.000Z", request={"subject": "fred"})),
    ]
    bad: list[tuple[bytes | None, bytes, str]] = [
        (b"e1", _legacy("completed", "e1", 30, result={}, status="archived"), "unknown-status"),
        (None, json.dumps({"event": "assessment.created", "data": {"status": "pending"}, "emittedAt":
                           "2024-05-01T12:00:00Z", "seq": 31, "emitter": "tap-test"}).encode(), "missing-field"),
        (b"e3", _legacy("progress", "e3", 32, progress="50"), "wrong-type"),
        (b"e4", _legacy("created", "e4", 33, request={"blob": "x" * 100_000}), "too-large"),
        (b"e5", b'{"event": "assessment.created", "data": {"assessmentId": "e5\xff\xfe"}}', "not-utf8"),
        (b"e6", b'{"event": "assessment.created", "data": ', "invalid-json"),
        (b"e7", _legacy("created", "e7", 34).replace(b"assessment.created", b"assessment.archived"), "unknown-event"),
    ]
    records: list[tuple[bytes | None, bytes]] = []
    dead: dict[int, str] = {}
    for i, (aid, value) in enumerate(good[:8]):
        records.append((aid.encode(), value))
    for key, value, kind in bad:
        dead[len(records)] = kind
        records.append((key, value))
    for aid, value in good[8:]:
        records.append((aid.encode(), value))
    return records, dead


@pytest.fixture(scope="module")
async def corpus(stack_settings: Settings) -> AsyncIterator[Corpus]:
    """The bad-input corpus written to a topic of its own and consumed by a running bridge."""
    run_id = uuid.uuid4().hex[:8]
    settings = stack_settings.model_copy(update={"legacy_topic": f"legacy.assessment-events.t{run_id}"})
    await ensure_topics(settings)
    ids = {k: f"bridge-{run_id}-{k}" for k in ("a", "b", "c", "d", "f")}
    records, dead = _corpus(ids)
    options = BridgeOptions(group_id=f"bridge-test-{run_id}", max_message_bytes=64 * 1024)
    running = await _start_bridge(settings, options)
    positions = await _produce(settings, records)
    await eventually(lambda: _group_caught_up(settings, options.group_id, settings.legacy_topic), bool,
                     timeout_s=60, what="bridge consumed the corpus")
    await _quiescent(settings, "processor and projector handled the corpus")
    yield Corpus(settings, ids, records, positions, Counter(dead.values()),
                 {positions[i]: kind for i, kind in dead.items()}, running, options)
    await running.close()


async def test_every_corpus_message_is_accounted_for(corpus: Corpus) -> None:
    """Each record is translated or dead-lettered with its reason (one per kind), and the bridge keeps running."""
    stats = corpus.run.bridge.stats
    n = len(corpus.records)
    assert stats.messages == n
    assert stats.translated + stats.dead_lettered == n
    assert stats.dead_lettered_by_kind == corpus.expected_dead
    assert not corpus.run.task.done(), "the bridge stopped"

    letters = [d for d in await dead_letters(corpus.settings, limit=1000)
               if d.source.startswith(corpus.settings.legacy_topic + "/")]
    got = {tuple(int(x) for x in d.source.rsplit("/", 2)[1:]): d for d in letters}
    assert {k: d.kind for k, d in got.items()} == corpus.bad_positions
    for d in letters:
        assert d.reason and d.wrapper["reason"] == d.reason and d.wrapper["kind"] == d.kind
    reasons = {d.kind: d.reason for d in letters}
    assert "data.status" in reasons["unknown-status"] and "'archived'" in reasons["unknown-status"]
    assert reasons["missing-field"] == "data.assessmentId: is required"
    assert reasons["wrong-type"] == "data.progress: must be a number, got string"
    assert "above the limit of 65536" in reasons["too-large"]
    assert "not UTF-8" in reasons["not-utf8"] and "not JSON" in reasons["invalid-json"]
    assert got[next(k for k, v in corpus.bad_positions.items() if v == "too-large")].wrapper["truncated"] is False

    # Still running: one more message after all the bad ones is translated and applied.
    late = f"{corpus.ids['f']}-late"
    await _produce(corpus.settings, [(late.encode(), _legacy("created", late, 99))])
    await eventually(lambda: _states(corpus.settings, [late]), lambda s: late in s, timeout_s=30,
                     what="a message after the corpus applied")


async def test_corpus_states_and_histories(corpus: Corpus) -> None:
    """Re-deliveries add nothing, orphans get their synthesised create/start, out-of-order input ends right."""
    ids = corpus.ids
    states = await _states(corpus.settings, list(ids.values()))
    assert {k: states[v]["state"] for k, v in ids.items()} == {
        "a": "COMPLETED", "b": "COMPLETED", "c": "FAILED", "d": "CANCELLED", "f": "PENDING"}
    a = states[ids["a"]]
    assert (a["version"], a["message"], a["result_data"], a["request_data"]) == (4, "half", {"score": 9},
                                                                                 {"subject": "alice"})
    assert states[ids["b"]]["request_data"] == {"subject": "bob"}
    assert states[ids["c"]]["error_message"] == "scorer crashed"
    histories = await _histories(corpus.settings, list(ids.values()))
    types = {k: [t for _, t, _, _ in histories[v]] for k, v in ids.items()}
    assert types == {
        "a": ["AssessmentCreated", "AssessmentStarted", "ProgressUpdated", "AssessmentCompleted"],
        "b": ["AssessmentCreated", "AssessmentStarted", "AssessmentCompleted"],
        "c": ["AssessmentCreated", "AssessmentStarted", "AssessmentFailed"],
        "d": ["AssessmentCreated", "AssessmentCancelled"],
        "f": ["AssessmentCreated"],
    }
    for h in histories.values():
        assert [v for v, _, _, _ in h] == list(range(1, len(h) + 1))
        assert all(source == "legacy-bridge" and cause.startswith("legacy:") for _, _, source, cause in h)
    synthesised = [cause for _, _, _, cause in histories[ids["b"]] + histories[ids["c"]] + histories[ids["d"]]]
    assert sum(c.endswith(":create") for c in synthesised) == 3 and sum(c.endswith(":start") for c in synthesised) == 2
    stats = corpus.run.bridge.stats
    assert stats.orphans == 3 and stats.synthesised == 5


async def test_legacy_emission_time_becomes_occurred_at(corpus: Corpus) -> None:
    """Events carry the legacy emittedAt as occurred_at (and the row its created/updated times); recorded_at is the store's clock."""
    f, a = corpus.ids["f"], corpus.ids["a"]
    conn = await connect(corpus.settings)
    try:
        events = await conn.fetch("SELECT assessment_id, occurred_at, recorded_at FROM projection.assessment_events"
                                  " WHERE assessment_id = ANY($1::text[])", [f, a])
        rows = {r["assessment_id"]: r for r in await conn.fetch(
            "SELECT assessment_id, created_at, updated_at FROM projection.assessments"
            " WHERE assessment_id = ANY($1::text[])", [f, a])}
    finally:
        await conn.close()
    noon, one_pm = datetime(2024, 5, 1, 12, tzinfo=UTC), datetime(2024, 5, 1, 13, tzinfo=UTC)
    assert {e["occurred_at"] for e in events if e["assessment_id"] == a} == {noon}
    assert [e["occurred_at"] for e in events if e["assessment_id"] == f] == [one_pm]
    assert all(e["recorded_at"] > datetime(2025, 1, 1, tzinfo=UTC) for e in events)
    assert (rows[f]["created_at"], rows[a]["created_at"], rows[a]["updated_at"]) == (one_pm, noon, noon)


async def test_out_of_order_rejections_are_inspectable(corpus: Corpus) -> None:
    """Late input the store refused (duplicate create, progress or start after completion) is listed with why."""
    refused: dict[str, list[tuple[str | None, str | None]]] = {}
    for aid in (corpus.ids["a"], corpus.ids["b"]):
        rows = await bridge_rejections(corpus.settings, assessment_id=aid)
        refused[aid] = sorted((r.error_type, (r.error_details or {}).get("transition")) for r in rows)
        assert all(r.origin == "bridge" and r.command_id.startswith("legacy:") for r in rows)
        assert all(r.error_message and aid in r.error_message for r in rows)
    assert refused[corpus.ids["a"]] == [("InvalidTransition", "create"), ("InvalidTransition", "update_progress")]
    assert refused[corpus.ids["b"]] == [("InvalidTransition", "create"), ("InvalidTransition", "start")]


# --- (b) re-reading the whole legacy topic ------------------------------------------------------------------

async def test_rereading_the_legacy_topic_appends_no_event(corpus: Corpus) -> None:
    """A second bridge (new group, empty view) re-reads the topic from offset 0: zero new events, same histories."""
    s = corpus.settings
    await _quiescent(s, "quiet before re-reading")
    ids = list(corpus.ids.values()) + [f"{corpus.ids['f']}-late"]
    before_offsets = await topic_end_offsets(s, s.events_topic)
    before_histories = await _histories(s, ids)
    legacy_end = sum((await topic_end_offsets(s, s.legacy_topic)).values())
    commands_before = sum((await topic_end_offsets(s, s.commands_topic)).values())

    options = BridgeOptions(group_id=f"{corpus.options.group_id}-reread", max_message_bytes=64 * 1024)
    second = await _start_bridge(s, options)
    try:
        await eventually(lambda: _group_caught_up(s, options.group_id, s.legacy_topic), bool, timeout_s=60,
                         what="second bridge re-read the topic")
        assert second.bridge.stats.messages == legacy_end
        # Its commands really were sent again (and answered as duplicates), not skipped.
        assert sum((await topic_end_offsets(s, s.commands_topic)).values()) >= (
            commands_before + second.bridge.stats.commands_sent)
        await _quiescent(s, "processor and projector handled the re-sent commands")
    finally:
        await second.close()
    assert await topic_end_offsets(s, s.events_topic) == before_offsets
    assert await _histories(s, ids) == before_histories


# --- (c) snapshot import ------------------------------------------------------------------------------------

def _export(path: Path, prefix: str, n: int) -> tuple[dict[str, dict[str, Any]], set[int]]:
    """Write an export of ``n`` assessments with bad lines mixed in; returns the expected states by id and
    the line numbers that must be rejected."""
    statuses = ["pending", "processing", "completed", "failed", "cancelled"]
    expected: dict[str, dict[str, Any]] = {}
    bad_lines: set[int] = set()
    lines: list[bytes] = []
    for i in range(n):
        if i % 97 == 13:
            bad = [
                json.dumps({"assessmentId": f"{prefix}-bad-{i}", "status": "archived"}).encode(),
                b'{"assessmentId": "' + prefix.encode() + b'-broken", "status": ',
                json.dumps({"status": "completed"}).encode(),
                json.dumps({"assessmentId": f"{prefix}-bad-{i}", "status": "pending", "progress": "ten"}).encode(),
                b'{"assessmentId": "\xff\xfe", "status": "pending"}',
            ][i % 5]
            lines.append(bad)
            bad_lines.add(len(lines))
        if i % 211 == 7:
            lines.append(b"")  # blank lines are counted, not rejected
        aid = f"{prefix}-{i}"
        status = statuses[i % 5]
        rec: dict[str, Any] = {
            "assessmentId": aid, "status": status,
            "progress": {"pending": 0, "processing": 40, "completed": 100, "failed": 60, "cancelled": 10}[status],
            "message": None if status in ("pending", "completed") else f"step {i}",
            "request": {"subject": f"s{i}", "n": i},
            "result": {"score": i} if status == "completed" else None,
            "error": "legacy scorer failed" if status == "failed" else None,
            "timestamp": "2024-05-01T12:00:00.000Z", "updatedAt": "2024-05-01T12:05:00.000Z",
            "duration": 1000 + i if status in ("completed", "failed", "cancelled") else None,
        }
        lines.append(json.dumps(rec).encode())
        # The export's times become the events' occurred_at: created at `timestamp`, every later step
        # at `updatedAt` (a pending one gets a progress step at `updatedAt`, so it keeps legacy's
        # updatedAt too); a legacy duration is carried for completions and failures.
        expected[aid] = {"state": status.upper(), "progress": rec["progress"], "message": rec["message"],
                         "request_data": rec["request"], "result_data": rec["result"], "error_message": rec["error"],
                         "created_at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
                         "updated_at": datetime(2024, 5, 1, 12, 5, tzinfo=UTC)}
        if status in ("completed", "failed"):
            expected[aid]["duration_ms"] = 1000 + i
    path.write_bytes(b"\n".join(lines) + b"\n")
    return expected, bad_lines


async def _check_imported(settings: Settings, expected: dict[str, dict[str, Any]]) -> None:
    async def probe() -> dict[str, dict[str, Any]]:
        return await _states(settings, list(expected))
    states = await eventually(probe, lambda s: len(s) == len(expected) and all(
        s[a]["state"] == e["state"] for a, e in expected.items()), timeout_s=60, what="imported states visible")
    for aid, e in expected.items():
        got = {k: states[aid][k] for k in e}
        assert got == e, aid
    histories = await _histories(settings, list(expected))
    for aid, h in histories.items():
        assert [v for v, _, _, _ in h] == list(range(1, len(h) + 1)), aid
        assert all(source == "migration" and cause.startswith("legacy-import:") for _, _, source, cause in h)


class _Interrupted(Exception):
    """Stands for a crash or Ctrl-C between batches."""


async def test_import_is_resumable_and_idempotent(stack_settings: Settings, tmp_path: Path) -> None:
    """Interrupted after 2 batches and resumed, the import ends right, reports each bad line once, then writes nothing."""
    s = stack_settings
    prefix = f"imp-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "export.jsonl"
    expected, bad_lines = _export(path, prefix, 3000)

    def interrupt(report: ImportReport) -> None:
        if report.batches == 2:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        await import_legacy(s, path, batch_size=500, progress=False, on_batch=interrupt)
    resumed = await import_legacy(s, path, batch_size=500, progress=False)
    assert resumed.first_line == 1001 and resumed.finished and not resumed.already_done
    assert resumed.lines_done == resumed.total_lines == 3000 + len(bad_lines) + len(range(7, 3000, 211))
    assert resumed.rejected == len(bad_lines) and resumed.refused == 0
    assert resumed.imported == len(expected)
    assert resumed.blank == len(range(7, 3000, 211))
    assert resumed.rejected_by_kind == {"unknown-status": 6, "invalid-json": 6, "missing-field": 6,
                                        "wrong-type": 7, "not-utf8": 6}
    rejected = [json.loads(x) for x in rejected_path(path).read_text().splitlines()]
    assert sorted(r["line"] for r in rejected) == sorted(bad_lines)  # each once, despite the interruption
    assert all(r["reason"] and r["kind"] for r in rejected)
    await _check_imported(s, expected)

    await _quiescent(s, "quiet after the import")
    events_before = await topic_end_offsets(s, s.events_topic)
    commands_before = await topic_end_offsets(s, s.commands_topic)
    again = await import_legacy(s, path, batch_size=500, progress=False)
    assert again.already_done and again.lines_this_run == 0
    assert await topic_end_offsets(s, s.commands_topic) == commands_before  # not even a command
    restarted = await import_legacy(s, path, batch_size=1000, progress=False, restart=True, overwrite=True)
    assert restarted.commands_sent == 0 and restarted.up_to_date == len(expected) and restarted.batches == 4
    await _quiescent(s, "quiet after the re-import")
    assert await topic_end_offsets(s, s.events_topic) == events_before


async def test_import_interrupted_mid_batch_resumes_to_the_same_state(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """Interrupted after a batch's sends but before its checkpoint, the resumed import ends in the exported states."""
    s = stack_settings
    prefix = f"imp-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "export.jsonl"
    expected, bad = _export(path, prefix, 1200)
    commands_before = sum((await topic_end_offsets(s, s.commands_topic)).values())
    # An outcome wait of 1 ms cannot be met: the import stops after sending its first batch, before the
    # checkpoint - what a crash between the sends and the checkpoint leaves behind.
    impatient = s.model_copy(update={"command_timeout_s": 0.001})
    with pytest.raises(CommandTimeout):
        await import_legacy(impatient, path, batch_size=300, progress=False)
    assert sum((await topic_end_offsets(s, s.commands_topic)).values()) > commands_before
    assert not rejected_path(path).read_bytes()  # the batch's bad lines wait for its checkpoint
    resumed = await import_legacy(s, path, batch_size=300, progress=False)
    assert resumed.first_line == 1 and resumed.finished and resumed.rejected == len(bad)
    assert resumed.imported + resumed.up_to_date == len(expected) and resumed.refused == 0
    await _check_imported(s, expected)


# --- end to end with the Node sample service ---------------------------------------------------------------------

NODE_DIR = ROOT / "bridge" / "node"


async def test_node_service_through_the_bridge_matches_its_own_export(stack_settings: Settings, tmp_path: Path) -> None:
    """The Node sample service's traffic, bridged, ends in the states of its own export, with no refusal at all."""
    run_id = uuid.uuid4().hex[:8]
    s = stack_settings.model_copy(update={"legacy_topic": f"legacy.assessment-events.n{run_id}"})
    await ensure_topics(s)
    export = tmp_path / "legacy-export.jsonl"
    node = await asyncio.create_subprocess_exec(
        "node", "bin/legacy-service.js", "--count", "300", "--fail-every", "5", "--cancel-every", "7",
        "--brokers", s.kafka_bootstrap, "--topic", s.legacy_topic, "--no-create-topic",
        "--emitter-id", f"node-{run_id}", "--export", str(export), "--log-level", "error",
        cwd=NODE_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(node.communicate(), 120)
    assert node.returncode == 0, err.decode()
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["tap"]["forwarded"] == summary["tap"]["emitted"] > 0

    options = BridgeOptions(group_id=f"bridge-node-{run_id}")
    running = await _start_bridge(s, options)
    try:
        await eventually(lambda: _group_caught_up(s, options.group_id, s.legacy_topic), bool, timeout_s=60,
                         what="bridge consumed the Node service's messages")
        stats = running.bridge.stats
        assert stats.messages == summary["tap"]["emitted"] and stats.dead_lettered == 0 and stats.synthesised == 0
        await _quiescent(s, "processor and projector handled the bridged commands")
    finally:
        await running.close()

    exported = [json.loads(x) for x in export.read_text().splitlines() if x.strip()]
    ids = [e["assessmentId"] for e in exported]
    states = await _states(s, ids)
    assert {a: states[a]["state"] for a in ids} == {e["assessmentId"]: e["status"].upper() for e in exported}
    for e in exported:
        got = states[e["assessmentId"]]
        assert (got["request_data"], got["result_data"], got["error_message"]) == (e["request"], e["result"],
                                                                                  e["error"])
    wanted = set(ids)
    assert [r for r in await bridge_rejections(s, limit=100_000) if r.assessment_id in wanted] == []

    report = await import_legacy(s, export, progress=False)
    assert (report.imported, report.rejected, report.up_to_date + report.store_ahead) == (0, 0, len(exported))
    assert report.commands_sent == 0


# --- the command line ------------------------------------------------------------------------------------------

def _bridge_cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "assessment_store.cli", "bridge", *args],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def test_cli_lists_dead_letters_and_rejections(corpus: Corpus) -> None:
    """`bridge dlq --json` shows the corpus's dead letters with reasons; `bridge rejections --json` the store's refusals."""
    r = _bridge_cli(corpus.settings, "dlq", "--limit", "100", "--json")
    assert r.returncode == 0, r.stderr
    # Keyed by source: re-reading the topic (test above) dead-letters the same records again.
    by_source = {d["source"]: d["kind"] for d in json.loads(r.stdout)}
    assert Counter(by_source.values()) == corpus.expected_dead
    r = _bridge_cli(corpus.settings, "rejections", "--assessment", corpus.ids["a"], "--json")
    assert r.returncode == 0, r.stderr
    assert {x["errorType"] for x in json.loads(r.stdout)} == {"InvalidTransition"}


def test_cli_import_reports_counts(stack_settings: Settings, tmp_path: Path) -> None:
    """`bridge import FILE --json` imports and reports lines, rejected lines with line numbers, and commands."""
    path = tmp_path / "small.jsonl"
    expected, bad = _export(path, f"cli-{uuid.uuid4().hex[:8]}", 40)
    r = _bridge_cli(stack_settings, "import", str(path), "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["imported"] == len(expected) and report["rejected"] == len(bad)
    assert {b["line"] for b in report["badLines"]} == bad


def test_cli_run_until_sigterm(stack_settings: Settings, tmp_path: Path) -> None:
    """`bridge run --pid-file P` writes P.ready once consuming and exits 0 on SIGTERM."""
    pid_file = tmp_path / "bridge.pid"
    env = {**os.environ, **settings_env(stack_settings)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "assessment_store.cli", "bridge", "run", "--pid-file", str(pid_file),
         "--group", f"bridge-cli-{uuid.uuid4().hex[:8]}"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        ready = pid_file.with_suffix(".ready")
        asyncio.run(eventually(_exists(ready), bool, timeout_s=60, what="bridge ready file"))
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "bridge stopping" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _exists(path: Path) -> Any:
    async def probe() -> bool:
        return path.exists()
    return probe


# --- poison messages (issue 9, defects 1 and 3) ------------------------------------------------------------------------

async def test_unstorable_legacy_messages_are_dead_lettered_and_the_bridge_keeps_running(stack_settings: Settings) -> None:
    """A duration of 2^63 (it once passed translation and failed Avro encoding, stopping the bridge on every start) and
    NUL in message, error or request are dead-lettered with their field; the bridge keeps running and applies the next message."""
    run_id = uuid.uuid4().hex[:8]
    settings = stack_settings.model_copy(update={"legacy_topic": f"legacy.assessment-events.poison{run_id}"})
    await ensure_topics(settings)
    aid = f"poison-{run_id}"
    poison = [
        _legacy("completed", f"{aid}-d", 1, duration=9223372036854775808),
        _legacy("progress", f"{aid}-m", 2, progress=5, message="a\u0000b"),
        _legacy("failed", f"{aid}-e", 3, error="boom\u0000"),
        _legacy("created", f"{aid}-r", 4, request={"q": ["\u0000"]}),
    ]
    good = _legacy("created", aid, 5, request={"after": "the poison"})
    options = BridgeOptions(group_id=f"bridge-poison-{run_id}")
    running = await _start_bridge(settings, options)
    try:
        positions = await _produce(settings, [(None, p) for p in poison] + [(aid.encode(), good)])
        await eventually(lambda: _states(settings, [aid]), lambda s: aid in s, timeout_s=60,
                         what="the message after the poison applied")
        assert not running.task.done(), "the bridge stopped"
        letters = {d.source: d for d in await dead_letters(settings, limit=100)
                   if d.source.startswith(settings.legacy_topic + "/")}
        wanted = {f"{settings.legacy_topic}/{p}/{o}" for p, o in positions[:4]}
        assert set(letters) == wanted
        assert sorted(d.wrapper["field"] for d in letters.values()) == [
            "data.duration", "data.error", "data.message", "data.request.q[0]"]
        assert all(d.kind == "invalid-value" and d.reason for d in letters.values())
        assert running.bridge.stats.dead_lettered == 4 and running.bridge.stats.translated == 1
        assert not await _states(settings, [f"{aid}-d", f"{aid}-m", f"{aid}-e", f"{aid}-r"])
    finally:
        await running.close()
