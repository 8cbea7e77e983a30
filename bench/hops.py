"""Where one command's time goes: each hop of the command path, timed from the caller's call.

    .venv/bin/python -m bench.hops [--commands 200] [--gap-ms 50] [--rate 0] [--warmup 20]
        [--port-base 29492] [--set NAME=VALUE]

Starts a private stack (data in .data/bench-hops-<port base>), warms it up (``--warmup`` seconds
of commands at 200/s: the broker's JIT, connection pools), then issues ``--commands``
``update_progress`` calls, one at a time ``--gap-ms`` apart (a lone command on an idle pipeline),
or open loop at ``--rate`` commands/s when given. Beside the calls, in the same process, two bare
consumers read the commands and events topics from their ends, and a LISTEN connection of its own
hears the projector's outcome notifications. For each call, each instant below is measured from
the moment of the call (one clock: everything runs on this machine):

1. *command readable*: a consumer fetched the command (the client's produce, acks=all, and the
   broker's hand-over to a waiting fetch);
2. *processor decided*: the event's record timestamp, which the processor sets to the instant it
   decided (``recorded_at``);
3. *event readable*: a consumer fetched the event (the processor's produce and the broker);
4. *projection committed*: the outcome notification arrived (the projector's fetch, fold and
   PostgreSQL commit; NOTIFY is delivered at commit);
5. *call returned*: the client's own wait (the same notification) and its read of the new state.

Prints p50 / p95 / p99 of each instant and of each hop (the difference between consecutive
instants, per command). The observers' fetches are one more consumer on each topic; they do not
slow the pipeline's own (each consumer has its own fetch session).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from assessment_store import AssessmentStore, Settings
from assessment_store.projections import OUTCOMES_CHANNEL, connect
from assessment_store.stack import Stack
from assessment_store.streams import kafka_client_options
from assessment_store.testing import isolated_settings, running_stack

from ._stats import percentile
from .commands import latency_at

ROOT = Path(__file__).resolve().parent.parent
console = Console()

STAGES = ("command readable", "processor decided", "event readable", "projection committed", "call returned")


@dataclass
class Seen:
    """Arrival times (wall clock, s) per assessment id, in order: (seen at, record timestamp)."""

    at: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def add(self, key: str, seen: float, stamp: float) -> None:
        self.at.setdefault(key, []).append((seen, stamp))

    def first_after(self, key: str, t0: float) -> tuple[float, float] | None:
        """The first arrival after ``t0``: the record of the call made at ``t0`` (one call per id in
        flight at a time)."""
        for seen, stamp in self.at.get(key, ()):
            if seen >= t0:
                return seen, stamp
        return None


async def watch(s: Settings, topic: str, seen: Seen, stop: asyncio.Event, ready: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(**kafka_client_options(s, "admin"), enable_auto_commit=False,
                                auto_offset_reset="latest", fetch_max_wait_ms=500, isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(s.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)  # resolved now, not at the first fetch (which could follow a call)
        ready.set()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            now = time.time()
            for records in batches.values():
                for rec in records:
                    if rec.key:
                        seen.add(rec.key.decode(), now, rec.timestamp / 1000)
    finally:
        await consumer.stop()


async def measure(s: Settings, args: argparse.Namespace) -> dict[str, list[float]]:
    commands, events, outcomes = Seen(), Seen(), Seen()
    async with AssessmentStore(s) as store:
        ids = [await store.create_assessment({"bench": i}, assessment_id=f"hops-{i}") for i in range(200)]
        for aid in ids:
            await store.start_assessment(aid)
        await latency_at(store, 200, args.warmup, ids)

        listener = await connect(s)

        def on_outcome(_c: Any, _pid: int, _ch: str, payload: str) -> None:
            _command_id, aid, _accepted, _version = payload.rsplit("|", 3)
            outcomes.add(aid, time.time(), 0.0)

        await listener.add_listener(OUTCOMES_CHANNEL, on_outcome)
        stop = asyncio.Event()
        readiness = [asyncio.Event(), asyncio.Event()]
        watchers = [asyncio.create_task(watch(s, s.commands_topic, commands, stop, readiness[0])),
                    asyncio.create_task(watch(s, s.events_topic, events, stop, readiness[1]))]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readiness)), 30)
        calls: list[tuple[str, float, float]] = []

        async def one(aid: str) -> None:
            t0 = time.time()
            await store.update_progress(aid, 50, "hops")
            calls.append((aid, t0, time.time()))

        loop = asyncio.get_running_loop()
        try:
            if args.rate:
                # Not commands.open_loop: its loop-lag probe would run beside these calls, and it
                # counts a failed call instead of stopping the run.
                start, tasks = loop.time(), []
                for i in range(args.commands):
                    delay = start + i / args.rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(one(ids[i % len(ids)])))
                await asyncio.gather(*tasks)
            else:
                for i in range(args.commands):
                    await one(ids[i % len(ids)])
                    await asyncio.sleep(args.gap_ms / 1000)  # the measured idle gap, not a synchronisation
            # The last call returned after its outcome and its event were seen by the pipeline;
            # the observers' own fetches of it may still be on their way.
            deadline = loop.time() + 10
            while loop.time() < deadline and not all(
                    commands.first_after(aid, t0) and events.first_after(aid, t0) for aid, t0, _ in calls[-5:]):
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.gather(*watchers)
            await listener.close()

    samples: dict[str, list[float]] = {name: [] for name in STAGES}
    missing = 0
    for aid, t0, t1 in calls:
        cmd, ev, out = commands.first_after(aid, t0), events.first_after(aid, t0), outcomes.first_after(aid, t0)
        if cmd is None or ev is None or out is None:
            missing += 1
            continue
        for name, at in zip(STAGES, (cmd[0], ev[1], ev[0], out[0], t1)):
            samples[name].append((at - t0) * 1000)
    if missing:
        console.print(f"[yellow]{missing} of {len(calls)} calls not seen by every observer: left out[/]")
    return samples


def report(samples: dict[str, list[float]], args: argparse.Namespace) -> None:
    how = f"open loop at {args.rate}/s" if args.rate else f"one at a time, {args.gap_ms:g} ms apart"
    table = Table(title=f"{len(samples[STAGES[0]])} update_progress calls, {how}: ms from the call")
    for col in ("instant", "p50", "p95", "p99", "hop from the previous", "p50", "p95", "p99"):
        table.add_column(col, justify="left" if col.startswith(("instant", "hop")) else "right")
    previous: list[float] | None = None
    for i, name in enumerate(STAGES):
        at = samples[name]
        hop = at if previous is None else [b - a for a, b in zip(previous, at)]
        table.add_row(name, *(f"{percentile(at, q):.1f}" for q in (0.5, 0.95, 0.99)),
                      "call → " + name if previous is None else f"{STAGES[i - 1]} → {name}",
                      *(f"{percentile(hop, q):.1f}" for q in (0.5, 0.95, 0.99)))
        previous = at
    console.print(table)


def main(args: argparse.Namespace) -> None:
    overrides = dict(kv.split("=", 1) for kv in args.set)
    settings = isolated_settings(ROOT / ".data" / f"bench-hops-{args.port_base}", port_base=args.port_base,
                                 **overrides)
    Stack(settings).purge(log=lambda _m: None)
    with running_stack(settings) as s:  # the stack manager is synchronous: outside the event loop
        samples = asyncio.run(measure(s, args))
    report(samples, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=200, help="calls measured")
    parser.add_argument("--gap-ms", type=float, default=50.0, help="idle time between two calls (one at a time)")
    parser.add_argument("--rate", type=int, default=0, help="open loop at this many calls/s instead")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds at 200/s before the measured calls")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the stack and the store's services (repeatable)")
    parser.add_argument("--port-base", type=int, default=29492, help="Kafka, controller and PostgreSQL ports: base..base+2.")
    main(parser.parse_args())
