"""Legacy bridge benchmark: legacy messages/s translated and appended to the commands topic.

    .venv/bin/python -m bench.bridge [--assessments 20000] [--repeat 3]

Starts a private stack (data in .data/bench-bridge-<port base>, ports 29492-29494 unless ``--port-base``), writes a realistic legacy
topic (per assessment: created, started, two progress updates, then completed - or failed for
every 10th - as the Node tap writes them, keyed by assessment id), then measures in one run:

1. the baselines: a bare aiokafka consumer reading the whole legacy topic (no decoding), messages/s;
   and the minimal translate-and-append loop (``minimal_loop_rate``: json parse, a field copy into a
   command, Avro encode, produce with acks=all, commit after the acks; no checks) into a scratch topic:
   the bridge's fair limit (goal: the bridge >= 60 % of it);
2. the bridge: ``LegacyBridge`` with a new consumer group reading the same topic, from its first
   fetch to the commit of its last batch - every message parsed, validated, planned, encoded to
   Avro and appended (acks=all) to the commands topic, offsets committed after the acks.

The stack's own bridge service, the command processor and the projector are stopped while measuring, so the two runs have the
machine to themselves (the bridge's job ends at the commands topic). Each is repeated and the best
run kept. Prints both rates and the ratio, with the goals, and for context: the bare consumer
that also runs ``json.loads`` on every value, and the bridge's CPU time per message by step
(measured in-process, without Kafka).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from rich.console import Console
from rich.table import Table

from assessment_store import Settings
from assessment_store.core import Command, CommandEnvelope, Complete, Create, EventSource, Fail, Start, UpdateProgress
from assessment_store.testing import isolated_settings, running_stack, topic_end_offsets
from assessment_store.bridge import (BridgeOptions, LegacyBridge, LegacyMessage, LegacyView, Translation, parse_message,
                                     translate_message)
from assessment_store.schemas import CommandCodec
from assessment_store.stack import Stack
from assessment_store.streams import TopicSpec, ensure_topics, kafka_client_options

ROOT = Path(__file__).resolve().parent.parent
console = Console()


def legacy_records(assessments: int) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs in emission order, the JSON the Node tap writes."""
    out: list[tuple[bytes, bytes]] = []
    seq = 0

    def emit(event: str, aid: str, data: dict[str, object]) -> None:
        nonlocal seq
        seq += 1
        at = f"2024-05-01T12:{(seq // 60000) % 60:02d}:{(seq // 1000) % 60:02d}.{seq % 1000:03d}Z"
        value = {"event": f"assessment.{event}", "data": {"assessmentId": aid, **data}, "emittedAt": at, "seq": seq,
                 "emitter": "bench-host-1"}
        out.append((aid.encode(), json.dumps(value, separators=(",", ":")).encode()))

    for i in range(assessments):
        aid = f"bench-legacy-{i:07d}"
        ts = "2024-05-01T12:00:00.000Z"
        emit("created", aid, {"status": "pending", "progress": 0, "timestamp": ts,
                              "request": {"subject": f"user-{i}", "kind": "credit", "amount": i * 10}})
        emit("started", aid, {"status": "processing", "progress": 0, "timestamp": ts})
        emit("progress", aid, {"status": "processing", "progress": 33, "message": "fetching", "timestamp": ts})
        emit("progress", aid, {"status": "processing", "progress": 66, "message": "scoring", "timestamp": ts})
        if i % 10 == 9:
            emit("failed", aid, {"status": "failed", "progress": 66, "error": "scorer timed out", "duration": 1200,
                                 "timestamp": ts})
        else:
            emit("completed", aid, {"status": "completed", "progress": 100, "result": {"score": i % 850, "band": "B"},
                                    "duration": 950, "timestamp": ts})
    return out


async def produce(settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(**kafka_client_options(settings, "admin"), acks="all", enable_idempotence=True,
                                linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(settings.legacy_topic, v, key=k) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def bare_consumer_rate(settings: Settings, total: int, *, decode: bool = False) -> float:
    """Messages/s of a bare consumer reading the whole topic, first record to last (``decode``: and
    ``json.loads`` of every value, the least any translation has to do)."""
    consumer = AIOKafkaConsumer(**kafka_client_options(settings, "admin"), group_id=None, enable_auto_commit=False,
                                max_poll_records=2000)
    await consumer.start()
    try:
        partitions = await topic_end_offsets(settings, settings.legacy_topic)
        tps = [TopicPartition(settings.legacy_topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        first: float | None = None
        while seen < total:
            for recs in (await consumer.getmany(timeout_ms=1000, max_records=2000)).values():
                if first is None and recs:
                    first = time.perf_counter()
                seen += len(recs)
                if decode:
                    for rec in recs:
                        json.loads(rec.value or b"null")
        assert first is not None
        return total / (time.perf_counter() - first)
    finally:
        await consumer.stop()


def _minimal_command(doc: dict[str, object]) -> Command | None:
    """The least translation there is: event name -> command, fields copied, nothing checked."""
    data = cast(dict[str, Any], doc["data"])
    aid = data["assessmentId"]
    event = doc["event"]
    if event == "assessment.created":
        return Create(assessment_id=aid, request=data.get("request") or {})
    if event == "assessment.started":
        return Start(assessment_id=aid)
    if event == "assessment.progress":
        return UpdateProgress(assessment_id=aid, progress=data["progress"], message=data.get("message"))
    if event == "assessment.completed":
        return Complete(assessment_id=aid, result=data.get("result"), duration_ms=data.get("duration"))
    if event == "assessment.failed":
        return Fail(assessment_id=aid, error=data.get("error") or "", duration_ms=data.get("duration"))
    return None


async def minimal_loop_rate(settings: Settings, total: int, topic: str, max_batch: int) -> float:
    """Messages/s of the minimal translate-and-append loop: a consumer group reading the legacy topic,
    per fetch ``json.loads`` + a field copy into a command + Avro encode + produce (acks=all,
    idempotent: the log's producer), the fetch's acks awaited, then its offsets committed. No checks,
    no plan, no view of the store, no dead letters: what any bridge has to do at the least."""
    codec = CommandCodec()
    consumer = AIOKafkaConsumer(settings.legacy_topic, **kafka_client_options(settings, "admin"),
                                group_id=f"bench-minimal-{uuid.uuid4().hex[:6]}", enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=max_batch)
    # The settings of the log's own producer (streams: acks=all, idempotent, no linger).
    producer = AIOKafkaProducer(**kafka_client_options(settings, "admin"), acks="all", enable_idempotence=True,
                                linger_ms=0, max_request_size=4 * 1024 * 1024)
    await producer.start()
    await consumer.start()
    try:
        seen = 0
        first: float | None = None
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=max_batch)
            if not batches:
                continue
            if first is None:
                first = time.perf_counter()
            now = datetime.now(UTC)
            futures = []
            for recs in batches.values():
                for rec in recs:
                    cmd = _minimal_command(json.loads(rec.value or b"null"))
                    if cmd is not None:
                        value, headers = codec.encode(CommandEnvelope(cmd, now, EventSource.LEGACY_BRIDGE))
                        futures.append(await producer.send(topic, value, key=rec.key, headers=headers))
                seen += len(recs)
            await asyncio.gather(*futures)
            await consumer.commit({tp: recs[-1].offset + 1 for tp, recs in batches.items()})
        assert first is not None
        return total / (time.perf_counter() - first)
    finally:
        await consumer.stop()
        await producer.stop()


class _TimedBridge(LegacyBridge):
    """The bridge, noting when its first fetch started and when the batch holding its ``target``-th
    message was committed."""

    def __init__(self, settings: Settings, options: BridgeOptions, target: int) -> None:
        super().__init__(settings, options)
        self.target = target
        self.first: float | None = None
        self.last = 0.0
        self.done = asyncio.Event()

    async def handle(self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        await super().handle(batches)
        if self.stats.messages >= self.target and not self.done.is_set():
            self.last = time.perf_counter()
            self.done.set()


async def bridge_rate(settings: Settings, total: int, group: str) -> tuple[float, _TimedBridge]:
    bridge = _TimedBridge(settings, BridgeOptions(group_id=group), total)
    stop = asyncio.Event()
    async with bridge:
        task = asyncio.create_task(bridge.run(stop))
        try:
            finished, _ = await asyncio.wait([task, asyncio.create_task(bridge.done.wait())], timeout=600,
                                             return_when=asyncio.FIRST_COMPLETED)
            if task in finished:
                task.result()
                raise RuntimeError("the bridge stopped early")
            if not bridge.done.is_set():
                raise RuntimeError("the bridge did not finish within 600 s")
        finally:
            stop.set()
            await task
    assert bridge.first is not None
    return total / (bridge.last - bridge.first), bridge


def cpu_breakdown(records: list[tuple[bytes, bytes]]) -> dict[str, float]:
    """Microseconds per message of each CPU step, in this process, without Kafka."""
    values = [v for _, v in records]
    n = len(values)
    codec = CommandCodec()
    now = datetime.now(UTC)

    def timed(step: Callable[[], object]) -> tuple[float, object]:
        t0 = time.perf_counter()
        out = step()
        return (time.perf_counter() - t0) / n * 1e6, out

    us_json, _ = timed(lambda: [json.loads(v) for v in values])
    us_parse, parsed = timed(lambda: [parse_message(v) for v in values])
    view = LegacyView()
    msgs = [m for m in cast(list[object], parsed) if isinstance(m, LegacyMessage)]
    us_plan, planned = timed(lambda: [translate_message(m, view) for m in msgs])
    commands = [c for t in cast(list[object], planned) if isinstance(t, Translation) for c in t.commands]
    us_avro, _ = timed(lambda: [codec.encode(CommandEnvelope(c, now, EventSource.LEGACY_BRIDGE)) for c in commands])
    return {"json.loads": us_json, "parse + check fields (incl. json.loads)": us_parse,
            "plan + store checks + command id": us_plan, "Avro encode (schemas.CommandCodec)": us_avro}


def main(args: argparse.Namespace) -> None:
    settings = isolated_settings(ROOT / ".data" / f"bench-bridge-{args.port_base}", port_base=args.port_base)
    Stack(settings).purge(log=lambda _m: None)
    with running_stack(settings) as s:  # the stack manager is synchronous: outside the event loop
        Stack(s).down(["bridge", "projector", "processor"], log=lambda _m: None)
        asyncio.run(measure(s, args))


async def measure(s: Settings, args: argparse.Namespace) -> None:
    records = legacy_records(args.assessments)
    total = len(records)
    await produce(s, records)
    assert sum((await topic_end_offsets(s, s.legacy_topic)).values()) == total
    size = sum(len(v) for _, v in records) / total
    baselines: list[float] = []
    bridges: list[float] = []
    last: _TimedBridge | None = None
    commands_before = sum((await topic_end_offsets(s, s.commands_topic)).values())
    decoding: list[float] = []
    minimal: list[float] = []
    scratch = s.commands_topic + ".bench-minimal"
    await ensure_topics(s, [TopicSpec(scratch, s.partitions, {})])
    for i in range(args.repeat):
        baselines.append(await bare_consumer_rate(s, total))
        decoding.append(await bare_consumer_rate(s, total, decode=True))
        minimal.append(await minimal_loop_rate(s, total, scratch, BridgeOptions().max_batch))
        rate, last = await bridge_rate(s, total, f"bench-bridge-{i}")
        bridges.append(rate)
    cpu = cpu_breakdown(records)
    commands_after = sum((await topic_end_offsets(s, s.commands_topic)).values())
    assert last is not None
    best_bridge, best_base = max(bridges), max(baselines)

    t = Table(title=f"legacy bridge, {total:,} legacy messages (~{size:.0f} bytes each), best of {args.repeat} "
                    f"(this machine: {os.cpu_count()} cores, shared with other work)")
    for col in ("measure", "value", "goal"):
        t.add_column(col)
    t.add_row("bridge: translated + appended (acks=all) + committed",
              f"{best_bridge:,.0f} messages/s  (runs: {', '.join(f'{r:,.0f}' for r in bridges)})", ">= 5,000/s")
    t.add_row("baseline: bare aiokafka consumer, same topic",
              f"{best_base:,.0f} messages/s  (runs: {', '.join(f'{r:,.0f}' for r in baselines)})", "")
    t.add_row("ratio bridge / bare consumer", f"{best_bridge / best_base:.1%}", "")
    t.add_row("baseline: minimal translate-and-append loop (json + field copy + Avro + produce acks=all + commit)",
              f"{max(minimal):,.0f} messages/s  (runs: {', '.join(f'{r:,.0f}' for r in minimal)})", "")
    t.add_row("ratio bridge / minimal loop", f"{best_bridge / max(minimal):.1%}", ">= 60 %")
    t.add_row("context: bare consumer + json.loads of each value",
              f"{max(decoding):,.0f} messages/s (ratio bridge / this: {best_bridge / max(decoding):.0%})", "")
    steps = cpu["parse + check fields (incl. json.loads)"] + cpu["plan + store checks + command id"] + cpu[
        "Avro encode (schemas.CommandCodec)"]
    t.add_row("context: CPU per message, one core, no Kafka",
              "  ".join(f"{k} {v:.1f} us" for k, v in cpu.items())
              + f"  => {steps:.1f} us, a ceiling of {1e6 / steps:,.0f} messages/s before any Kafka I/O", "")
    t.add_row("commands appended per run", f"{(commands_after - commands_before) // args.repeat:,} "
              f"(bridge stats of the last run: {last.stats})", "")
    console.print(t)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assessments", type=int, default=20_000, help="5 legacy messages each")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best is kept")
    parser.add_argument("--port-base", type=int, default=29492, help="Kafka, controller and PostgreSQL ports base..base+2")
    main(parser.parse_args())
