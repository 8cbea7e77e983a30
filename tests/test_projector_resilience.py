"""The projector against poison events, PostgreSQL crashes and restarts: quarantine, durability,
seek before the first fetch (issue 9, defects 1, 2, 7, 8)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from assessment_store import AssessmentStore, AssessmentStoreError, Settings, State
from assessment_store.core import Completed, Created, Event, Failed, Payload, ProgressUpdated, Retried, Started
from assessment_store.testing import eventually, produce_lifecycles, projected_event_count, topic_end_offsets
from assessment_store.projections import REBUILD_SCHEMA, connect, list_quarantine, refold, replay
from assessment_store.stack import Stack, settings_env
from assessment_store.stack._procs import is_alive, wait_until
from assessment_store.streams.testing import EventProducer

pytestmark = pytest.mark.stack


async def _append(settings: Settings, aid: str, payloads: list[Payload], first_version: int = 1) -> None:
    """Append events straight to the events topic (bypassing the command path, which refuses NUL)."""
    async with EventProducer(settings) as producer:
        for v, payload in enumerate(payloads, start=first_version):
            now = datetime.now(UTC)
            await producer.append(Event(aid, v, payload, now, now))


async def _version(settings: Settings, aid: str) -> int | None:
    conn = await connect(settings)
    try:
        v = await conn.fetchval("SELECT version FROM projection.assessments WHERE assessment_id = $1", aid)
        return int(v) if v is not None else None
    finally:
        await conn.close()


async def _quarantined(settings: Settings) -> dict[str, int]:
    return {e.assessment_id: e.held for e in await list_quarantine(settings)}


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "assessment_store.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **settings_env(settings)}, timeout=120)


async def test_poisoned_event_is_quarantined_and_others_keep_folding(stack_settings: Settings) -> None:
    """An event PostgreSQL refuses quarantines its assessment only: later events are held, every other
    assessment keeps folding, `quarantine list` shows it, a re-fold after the fix applies the held events,
    and replay quarantines it too and says so."""
    s = stack_settings
    tag = uuid.uuid4().hex[:8]
    nul, fixable = f"quar-{tag}-nul", f"quar-{tag}-fix"
    conn = await connect(s)
    try:
        # A refusal that a fix can lift: PostgreSQL refuses (data exception) the third event of one
        # assessment until the trigger is dropped, which stands for "the fix" (a release, a migration).
        await conn.execute(
            "CREATE FUNCTION public.test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'refused by the test' USING ERRCODE = '22023'; END $$")
        await conn.execute(
            "CREATE TRIGGER test_refuse BEFORE INSERT ON projection.assessment_events FOR EACH ROW"
            f" WHEN (NEW.assessment_id = '{fixable}' AND NEW.version >= 3) EXECUTE FUNCTION public.test_refuse()")
    finally:
        await conn.close()
    try:
        await _append(s, nul, [Created({"q": 1}), Started(), Failed("a\x00b", retryable=True), Retried(1)])
        await _append(s, fixable, [Created({"q": 2}), Started(), ProgressUpdated(50, "half"), Completed({"ok": 1}, 5)])
        others = await produce_lifecycles(s, 100, prefix=f"quar-{tag}-other")
        await eventually(lambda: projected_event_count(s, f"quar-{tag}-other"), lambda n: n == others, timeout_s=60,
                         what="every other assessment folded past the poisoned ones")
        held = await eventually(lambda: _quarantined(s), lambda q: nul in q and fixable in q, timeout_s=30,
                                what="both assessments quarantined")
        assert (held[nul], held[fixable]) == (2, 2)  # the refused event and the one after it
        assert await _version(s, nul) == 2 and await _version(s, fixable) == 2  # everything before it applied

        listed = _cli(s, "quarantine", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        entries = {e["assessment_id"]: e for e in json.loads(listed.stdout)}
        assert entries[nul]["sqlstate"] in ("22021", "22P05") and entries[fixable]["sqlstate"] == "22023"
        log_text = Stack(s).projector.log_file.read_text(errors="replace")
        assert f"QUARANTINED assessment '{nul}'" in log_text  # the alert

        # Still refused: it stays quarantined, the attempt recorded.
        again = await refold(s, nul)
        assert not again.refolded and again.version == 2
        conn = await connect(s)
        try:
            await conn.execute("DROP TRIGGER test_refuse ON projection.assessment_events")  # the fix
        finally:
            await conn.close()
        done = _cli(s, "quarantine", "refold", fixable)
        assert done.returncode == 0, done.stdout + done.stderr
        assert await _version(s, fixable) == 4
        assert fixable not in await _quarantined(s)
        # The live projector reloads the quarantine after the re-fold and folds on.
        more = await produce_lifecycles(s, 10, prefix=f"quar-{tag}-after")
        await eventually(lambda: projected_event_count(s, f"quar-{tag}-after"), lambda n: n == more, timeout_s=60,
                         what="folding after the re-fold")

        report = await replay(s, dry_run=True, restart=True)
        assert report.verification.ok, report.verification
        assert report.quarantined >= 1
        conn = await connect(s)
        try:
            assert await conn.fetchval(f"SELECT count(*) FROM {REBUILD_SCHEMA}.quarantine_held WHERE assessment_id"
                                       " = $1", nul) == 2
            await conn.execute(f"DROP SCHEMA {REBUILD_SCHEMA} CASCADE")
        finally:
            await conn.close()
    finally:
        conn = await connect(s)
        try:
            await conn.execute("DROP TRIGGER IF EXISTS test_refuse ON projection.assessment_events")
            await conn.execute("DROP FUNCTION IF EXISTS public.test_refuse()")
        finally:
            await conn.close()


async def _lifecycle_with_retries(store: AssessmentStore, aid: str, acked: dict[str, int], deadline: float) -> None:
    """One lifecycle through the command path; each command re-sent (same command id) until acknowledged."""
    loop = asyncio.get_running_loop()
    steps = [
        lambda: store.create_assessment({"c": aid}, assessment_id=aid, command_id=f"{aid}:1"),
        lambda: store.start_assessment(aid, command_id=f"{aid}:2"),
        lambda: store.update_progress(aid, 50, command_id=f"{aid}:3"),
        lambda: store.complete_assessment(aid, {"done": True}, command_id=f"{aid}:4"),
    ]
    for version, step in enumerate(steps, start=1):
        while True:
            try:
                await step()
                break
            except AssessmentStoreError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.2)  # client pacing between re-sends, not synchronization
        acked[aid] = version  # acknowledged: the client was told it is visible


async def _postgres_back(stack: Stack) -> None:
    """Start PostgreSQL again through the stack (old backends may hold shared memory a moment)."""
    async def try_up() -> bool:
        try:
            await asyncio.to_thread(stack.up, ["postgres"], lambda _m: None)
            return True
        except AssessmentStoreError:
            return False
    await eventually(try_up, lambda ok: ok, timeout_s=60, what="PostgreSQL restarted")


@pytest.mark.parametrize("crash", ["kill-9-postmaster", "pg_ctl-immediate"])
async def test_postgres_crash_under_load_loses_no_acknowledged_write(stack_settings: Settings, crash: str) -> None:
    """PostgreSQL crashed (kill -9 of the postmaster, or pg_ctl stop -m immediate) under a steady load of
    commands and restarted: every acknowledged write is in the projection, the projection equals a
    replay, and the processor and projector never exited."""
    s = stack_settings
    stack = Stack(s)
    projector_pid, processor_pid = stack.projector.pid(), stack.processor.pid()
    assert projector_pid is not None and processor_pid is not None
    tag = f"pgchaos-{crash[:4]}-{uuid.uuid4().hex[:6]}"
    acked: dict[str, int] = {}
    async with AssessmentStore(s) as store:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 180

        async def worker(w: int) -> None:
            for i in range(40):
                await _lifecycle_with_retries(store, f"{tag}-{w}-{i}", acked, deadline)

        load = [asyncio.create_task(worker(w)) for w in range(6)]
        await eventually(lambda: _count(acked), lambda n: n >= 30, timeout_s=60, what="load running")
        pid = stack.postgres.pid()
        assert pid is not None
        if crash == "kill-9-postmaster":
            os.kill(pid, signal.SIGKILL)
        else:
            r = await asyncio.to_thread(stack.postgres._pg, "pg_ctl", "stop", "-D", str(stack.postgres.pgdata()),
                                        "-m", "immediate")
            assert r.returncode == 0, r.stderr
        assert await asyncio.to_thread(wait_until, lambda: not is_alive(pid), 20.0)
        await _postgres_back(stack)
        await asyncio.gather(*load)
    assert len(acked) == 240 and all(v == 4 for v in acked.values())
    conn = await connect(s)
    try:
        rows = await conn.fetch("SELECT assessment_id, version, state FROM projection.assessments"
                                " WHERE assessment_id LIKE $1", tag + "-%")
    finally:
        await conn.close()
    projected = {r["assessment_id"]: (r["version"], r["state"]) for r in rows}
    lost = {aid: (v, projected.get(aid)) for aid, v in acked.items() if projected.get(aid, (0, ""))[0] < v}
    assert not lost, f"acknowledged writes missing from the projection: {lost}"
    assert all(state == State.COMPLETED.value for _, state in projected.values())
    assert stack.projector.pid() == projector_pid, "the projector exited"
    assert stack.processor.pid() == processor_pid, "the processor exited"
    report = await replay(s, dry_run=True, restart=True)
    assert report.verification.ok, report.verification
    conn = await connect(s)
    try:
        await conn.execute(f"DROP SCHEMA {REBUILD_SCHEMA} CASCADE")
    finally:
        await conn.close()


async def _count(d: dict[str, int]) -> int:
    return sum(d.values())


async def _anomaly_kinds(settings: Settings, prefix: str) -> dict[str, int]:
    conn = await connect(settings)
    try:
        rows = await conn.fetch("SELECT kind, count(*) AS n FROM projection.anomalies WHERE assessment_id LIKE $1"
                                " GROUP BY kind", prefix + "-%")
        return {r["kind"]: r["n"] for r in rows}
    finally:
        await conn.close()


async def _set_kafka_group_offsets(settings: Settings, at_zero: bool) -> None:
    """Move the projector group's advisory Kafka offsets away from the ones PostgreSQL stores (the
    group is empty: the projector is stopped)."""
    ends = await topic_end_offsets(settings, settings.events_topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=settings.projector_group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = {TopicPartition(settings.events_topic, p): (0 if at_zero else max(0, o - 50)) for p, o in ends.items()}
        consumer.assign(list(tps))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in tps.items()})
    finally:
        await consumer.stop()


async def test_restarted_projector_seeks_before_its_first_fetch(stack_settings: Settings) -> None:
    """Restarted under load with Kafka's advisory offsets moved away from the stored ones (and killed -9),
    the projector folds nothing from Kafka's offsets: no duplicate or gap anomaly, equal to a replay."""
    s = stack_settings
    stack = Stack(s)
    tag = f"seek-{uuid.uuid4().hex[:6]}"

    async def stream() -> int:
        total = 0
        for c in range(16):
            total += await produce_lifecycles(s, 300, prefix=f"{tag}-{c}")
            await asyncio.sleep(0.2)  # pacing of the load, not synchronization
        return total

    load = asyncio.create_task(stream())
    for round_ in range(4):
        await eventually(lambda: projected_event_count(s, tag), lambda n: n > 0, timeout_s=60, what="folding")
        if round_ % 2 == 0:
            await asyncio.to_thread(stack.projector.stop)
            await _set_kafka_group_offsets(s, at_zero=round_ == 0)
        else:
            pid = stack.projector.pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            assert await asyncio.to_thread(wait_until, lambda: not is_alive(pid), 10.0)
        await asyncio.to_thread(stack.up, ["projector"], lambda _m: None)
    total = await load
    await eventually(lambda: projected_event_count(s, tag), lambda n: n == total, timeout_s=120,
                     what="every streamed event projected")
    assert await _anomaly_kinds(s, tag) == {}
    report = await replay(s, dry_run=True, restart=True)
    assert report.verification.ok, report.verification
    conn = await connect(s)
    try:
        rebuilt = await conn.fetchval(f"SELECT count(*) FROM {REBUILD_SCHEMA}.anomalies WHERE assessment_id LIKE $1",
                                      tag + "-%")
        assert rebuilt == 0
        await conn.execute(f"DROP SCHEMA {REBUILD_SCHEMA} CASCADE")
    finally:
        await conn.close()
