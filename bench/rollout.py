"""Rollout benchmark: how fast a rollback reaches every router instance, how long the reverse sync then
needs to drain, and what publishing observations costs a routed call.

    .venv/bin/python -m bench.rollout [--instances 12] [--rounds 3] [--calls 100000] [--port-base 29792]

Starts a private stack (data in .data/bench-rollout, ports --port-base..+2) and, in one process,
``--instances`` router instances (each its own ``FlagStore`` on a private flags topic and its own
``ObservationPublisher``), writing through the real store, plus a ``ReverseSync`` started at the end of
the events topic. Measures:

* baseline: a bare flag change (``FlagStore.update`` turning the store off) to each instance's
  ``FlagStore`` folding it - the flags topic's own propagation;
* rollback: ``--rounds`` gated rollouts (window 1 s) each rolled back by the gates on a store that fails
  every call; from the rollback decision's ``atS`` to each instance folding the flags that send it to
  legacy (target: p95 <= 1 s), as a ratio against the baseline's p95;
* reverse-sync drain: from the rollback decision to the reverse sync's group having committed every
  event on the events topic (``reverse_sync_status(...).behind == 0``), with the backlog at the decision;
* reverse-sync drain with a backlog: a reverse sync started ``--backlog`` lifecycles (x 4 events)
  behind the end of the events topic, timed until its group has committed them all;
* observation overhead: calls/s of ``MigrationRouter.get_state`` routed to the store with the
  observer on and off, alternating rounds (medians). Two stores: an in-memory one (the router's own
  cost, where the observer's share is largest) and the real store (what callers see); target <= 2 %.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import math
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from rich.console import Console
from rich.table import Table

from assessment_store import AssessmentStore, DatabaseUnavailable, Settings
from assessment_store.core import Assessment, State
from assessment_store.migration import (
    FlagChange,
    FlagStore,
    GateThresholds,
    MigrationFlags,
    MigrationRouter,
    ObservationPublisher,
    ReverseSync,
    RolloutController,
    RolloutPlan,
    StoreBackend,
    reverse_sync_status,
)
from assessment_store.migration.testing import InMemoryLegacyBackend
from assessment_store.stack import Stack
from assessment_store.testing import eventually, isolated_settings, produce_lifecycles, running_stack, start_group_at_end

ROOT = Path(__file__).resolve().parent.parent
console = Console()
WINDOW_S = 1.0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class Dial:
    """The real store behind a switch: while ``down`` every call raises ``DatabaseUnavailable``."""

    def __init__(self, store: AssessmentStore) -> None:
        self.store = store
        self.down = False

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise DatabaseUnavailable("bench: injected store failure")
            return await target(*args, **kwargs)

        return call


class Fleet:
    def __init__(self, settings: Settings, store: AssessmentStore, n: int) -> None:
        tag = uuid.uuid4().hex[:8]
        self.settings = settings
        self.flags_topic, self.obs_topic, self.rollout_topic = (f"bench.rollout-{k}.{tag}" for k in ("flags", "obs", "log"))
        self.dial = Dial(store)
        self.n = n
        self.flag_stores: list[FlagStore] = []
        self.publishers: list[ObservationPublisher] = []
        self.routers: list[MigrationRouter] = []
        self.seen_off: dict[int, float] = {}
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for i in range(self.n):
            flags = FlagStore(self.settings, topic=self.flags_topic)
            await flags.start()
            pub = ObservationPublisher(self.settings, window_s=WINDOW_S, topic=self.obs_topic, instance_id=f"bench-{i}")
            await pub.start()
            router = MigrationRouter(cast(StoreBackend, self.dial), InMemoryLegacyBackend(), flags,
                                     sync_before_serve=False, observer=pub)
            flags.subscribe(self._watcher(i))
            self.flag_stores.append(flags)
            self.publishers.append(pub)
            self.routers.append(router)
            self.tasks.append(asyncio.create_task(self._write(router)))

    def _watcher(self, i: int) -> Callable[[FlagChange], None]:
        def seen(change: FlagChange) -> None:
            if not change.flags.enable_assessment_store and i not in self.seen_off:
                self.seen_off[i] = time.time()

        return seen

    async def _write(self, router: MigrationRouter) -> None:
        while True:
            aid = uuid.uuid4().hex
            try:
                await router.create_assessment({"bench": "rollout"}, assessment_id=aid)
                await router.get_state(aid)
            except Exception:
                pass  # counted by the observer; this loop only makes traffic
            await asyncio.sleep(0.01)

    async def all_off(self, timeout_s: float = 10.0) -> None:
        await eventually(lambda: asyncio.sleep(0, len(self.seen_off)), lambda k: k == self.n, timeout_s=timeout_s,
                         what="every instance folded the flags")

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for p in self.publishers:
            await p.stop()
        for f in self.flag_stores:
            await f.stop()


async def propagation(settings: Settings, store: AssessmentStore, instances: int, rounds: int,
                      reverse_group: str) -> tuple[list[float], list[float], list[tuple[float, int]]]:
    fleet = Fleet(settings, store, instances)
    await fleet.start()
    baseline: list[float] = []
    rollback: list[float] = []
    drains: list[tuple[float, int]] = []
    try:
        async with FlagStore(settings, topic=fleet.flags_topic) as operator:
            for _ in range(rounds):
                await operator.update("bench", enable_assessment_store=True, enable_dual_mode=False)
                await eventually(lambda: asyncio.sleep(0, [f.current().enable_assessment_store for f in fleet.flag_stores]),
                                 all, timeout_s=10, what="every instance on the store")
                fleet.seen_off.clear()
                t0 = time.time()
                await operator.update("bench", enable_assessment_store=False)
                await fleet.all_off()
                baseline += [fleet.seen_off[i] - t0 for i in range(instances)]
        plan = RolloutPlan(steps=(50, 100), first_soak_s=600, soak_s=600, window_s=WINDOW_S, grace_s=0.3,
                           thresholds=GateThresholds(min_calls=5))
        for r in range(rounds):
            fleet.dial.down = False
            controller = RolloutController(settings, plan, topic=fleet.rollout_topic, observations_topic=fleet.obs_topic,
                                           flags_topic=fleet.flags_topic, new=r > 0)
            task = asyncio.create_task(controller.run())
            await eventually(lambda: asyncio.sleep(0, controller.state.status), lambda s: s == "running", timeout_s=30)
            await eventually(lambda: asyncio.sleep(0, [f.current().enable_assessment_store for f in fleet.flag_stores]),
                             all, timeout_s=10, what="every instance on the store")
            await asyncio.sleep(2.0)  # two windows of healthy traffic before the fault (a bench, not a test)
            fleet.seen_off.clear()
            fleet.dial.down = True
            state = await asyncio.wait_for(task, 60)
            assert state.status == "rolled_back", state.status
            decision = next(e for e in reversed(state.events) if e.type == "rollback")
            # Drained: the first status query that finds nothing behind; the time is when that query started
            # (the answer describes a moment between its start and its end; the query alone takes ~1 s here).
            backlog = -1
            while True:
                asked = time.time()
                behind = (await reverse_sync_status(settings, group_id=reverse_group)).behind
                backlog = behind if backlog < 0 else backlog
                if behind == 0:
                    break
                await asyncio.sleep(0.05)  # polling the group's lag: nothing to wait on but the broker's answer
            drains.append((max(0.0, asked - decision.at_s), backlog))
            await fleet.all_off()
            rollback += [fleet.seen_off[i] - decision.at_s for i in range(instances)]
    finally:
        await fleet.close()
    return baseline, rollback, drains


class MemoryStore:
    """An in-memory store side answering ``get_state`` at once: the router's own cost, undiluted."""

    def __init__(self) -> None:
        now = datetime.now(UTC)
        self.state = Assessment("bench-1", State.PROCESSING, 2, 50, None, now, now, {"x": 1})

    async def get_state(self, assessment_id: str) -> Assessment:
        return self.state


class StaticFlags:
    def __init__(self) -> None:
        self.flags = MigrationFlags(enable_assessment_store=True, enable_dual_mode=False)

    def current(self) -> MigrationFlags:
        return self.flags


async def calls_per_s(router: MigrationRouter, aid: str, calls: int, concurrency: int) -> float:
    per = calls // concurrency

    async def lane() -> None:
        for _ in range(per):
            await router.get_state(aid)

    t0 = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return per * concurrency / (time.perf_counter() - t0)


async def overhead(settings: Settings, store: AssessmentStore, calls: int, rounds: int) -> dict[str, tuple[float, float]]:
    """backend -> (median calls/s off, median calls/s on)."""
    pub = ObservationPublisher(settings, window_s=WINDOW_S, topic=f"bench.rollout-obs-overhead.{uuid.uuid4().hex[:8]}")
    await pub.start()
    aid = await store.create_assessment({"bench": "overhead"})
    await eventually(lambda: store.find_state(aid), lambda s: s is not None, timeout_s=30)
    out: dict[str, tuple[float, float]] = {}
    try:
        for name, backend, n, conc in (("in-memory store", cast(StoreBackend, MemoryStore()), calls, 1),
                                       ("real store (PostgreSQL read)", cast(StoreBackend, store), max(1000, calls // 50), 8)):
            routers = {False: MigrationRouter(backend, InMemoryLegacyBackend(), StaticFlags(), observer=None),
                       True: MigrationRouter(backend, InMemoryLegacyBackend(), StaticFlags(), observer=pub)}
            await calls_per_s(routers[False], aid, n // 10, conc)  # warm-up
            got: dict[bool, list[float]] = {False: [], True: []}
            for _, on in itertools.product(range(rounds), (False, True)):
                got[on].append(await calls_per_s(routers[on], aid, n, conc))
            out[name] = (statistics.median(got[False]), statistics.median(got[True]))
    finally:
        await pub.stop()
    return out


async def backlog_drain(settings: Settings, lifecycles: int) -> tuple[int, float]:
    """(events, seconds) for a reverse sync started behind ``lifecycles`` x 4 store events to catch up with them."""
    group = f"bench-reverse-backlog-{uuid.uuid4().hex[:6]}"
    await start_group_at_end(settings, group, settings.events_topic)
    events = await produce_lifecycles(settings, lifecycles, prefix=f"bench-backlog-{uuid.uuid4().hex[:6]}")
    stop = asyncio.Event()
    t0 = time.perf_counter()
    async with ReverseSync(settings, group_id=group) as reverse:
        task = asyncio.create_task(reverse.run(stop))
        try:
            while (await reverse_sync_status(settings, group_id=group)).behind > 0:
                await asyncio.sleep(0.05)  # polling the group's lag: nothing to wait on but the broker's answer
            elapsed = time.perf_counter() - t0
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    return events, elapsed


async def bench(settings: Settings, instances: int, rounds: int, calls: int, backlog: int) -> None:
    reverse_group = f"bench-reverse-{uuid.uuid4().hex[:6]}"
    await start_group_at_end(settings, reverse_group, settings.events_topic)
    stop = asyncio.Event()
    async with AssessmentStore(settings) as store, ReverseSync(settings, group_id=reverse_group) as reverse:
        reverse_task = asyncio.create_task(reverse.run(stop))
        try:
            baseline, rollback, drains = await propagation(settings, store, instances, rounds, reverse_group)
            ov = await overhead(settings, store, calls, 5)
        finally:
            stop.set()
            await asyncio.wait_for(reverse_task, 30)
    drained_events, drain_s = await backlog_drain(settings, backlog)
    table = Table(title=f"rollback propagation, {instances} router instances x {rounds} rounds")
    for col in ("measure", "p50 ms", "p95 ms", "max ms", "x baseline p95"):
        table.add_column(col)
    b95 = pct(baseline, 95)
    for name, vals in (("bare flag change -> instance folds it (baseline)", baseline),
                       ("rollback decision -> instance on legacy", rollback)):
        table.add_row(name, f"{pct(vals, 50) * 1000:.0f}", f"{pct(vals, 95) * 1000:.0f}", f"{max(vals) * 1000:.0f}",
                      f"{pct(vals, 95) / b95:.2f}")
    console.print(table)
    for i, (seconds, backlog) in enumerate(drains):
        console.print(f"round {i + 1}: reverse sync found drained by a status query started {seconds * 1000:.0f} ms "
                      f"after the rollback decision (backlog at the first query: {backlog} events)")
    console.print(f"reverse sync started {drained_events:,} store events behind: drained in {drain_s:.1f} s "
                  f"({drained_events / drain_s:,.0f} events/s, the status queries' ~1 s resolution included)")
    t2 = Table(title="router calls/s, observation publisher off vs on (medians of 5 alternating rounds)")
    for col in ("store side", "off calls/s", "on calls/s", "overhead"):
        t2.add_column(col)
    for name, (off, on) in ov.items():
        t2.add_row(name, f"{off:,.0f}", f"{on:,.0f}", f"{(off - on) / off * 100:+.1f} %")
    console.print(t2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--port-base", type=int, default=29792)
    parser.add_argument("--backlog", type=int, default=5_000,
                        help="lifecycles (4 events each) the reverse sync starts behind, for the drain measure")
    args = parser.parse_args()
    # Every failing store call with fallback on logs a warning: thousands of lines, none of them news here.
    logging.getLogger("assessment_store.migration.router").setLevel(logging.ERROR)
    settings = isolated_settings(ROOT / ".data" / "bench-rollout", port_base=args.port_base)
    Stack(settings).purge(log=lambda _m: None)
    with running_stack(settings) as s:
        asyncio.run(bench(s, args.instances, args.rounds, args.calls, args.backlog))


if __name__ == "__main__":
    main()
