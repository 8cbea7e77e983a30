"""The migration half of the README demo: the legacy Node service and the store side by side in dual mode.

Starts the Node sample legacy service behind HTTP (its tap writes the legacy topic, which the stack's
bridge carries into the store; it imports the reverse topic), runs the reverse sync in-process, and
drives assessments through ``MigrationRouter`` at 30 % with shadow comparison on. Then it shows where
each one was served, that every one is in the store's projection (legacy ones through tap -> bridge),
that the legacy side holds the store-served ones (reverse sync), and what the shadows concluded.

Then a compressed rollout (``run_rollout_demo``): 10 -> 50 -> 100 % through ``RolloutController`` with 1 s
windows and 2 s soaks, while two router instances make traffic and publish their windows; one line per
decision, with the gate reading it was taken on.

The demo's flags, rollout and observations live on topics of their own (``<flags topic>.demo``,
``<rollout topic>.demo``, ``<observations topic>.demo``), so it never changes the stack's real
migration flags or rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

from rich.console import Console
from rich.table import Table

from assessment_store.core import Assessment, Settings, State
from assessment_store.client import AssessmentStore

from assessment_store.migration import (
    FLAGS_TOPIC,
    OBSERVATIONS_TOPIC,
    ROLLOUT_TOPIC,
    FlagStore,
    GateThresholds,
    HttpLegacyBackend,
    MigrationRouter,
    MismatchLog,
    ObservationPublisher,
    ReverseSync,
    RolloutController,
    RolloutEvent,
    RolloutPlan,
    RolloutState,
    ShadowObserver,
    Side,
    event_line,
    manual_rollback,
    read_rollout,
    start_legacy_http,
)

__all__ = ["DEMO_STEPS", "run_migration_demo", "run_rollout_demo"]

_DEMO_GROUP = "assessment-store-demo"


async def _lifecycle(router: MigrationRouter, i: int, aid: str) -> Assessment:
    await router.create_assessment({"subject": f"migrating-{i}", "checks": ["identity"]}, assessment_id=aid)
    await router.start_assessment(aid)
    await router.update_progress(aid, 50, "half way")
    if i % 5 == 4:
        await router.fail_assessment(aid, "legacy scorer unavailable")
    else:
        await router.complete_assessment(aid, {"score": 640 + 9 * i})
    return await router.wait_for_completion(aid, 30)


async def run_migration_demo(settings: Settings, count: int, out: Console, *, percentage: float = 30.0,
                             rollout: bool = True) -> bool:
    """Run it and print the result, then (``rollout``) a compressed rollout; returns whether every check held."""
    t0 = time.monotonic()
    run = uuid.uuid4().hex[:6]
    legacy_http = await start_legacy_http(
        settings, group=f"{_DEMO_GROUP}-legacy", emitter_id=f"legacy-demo-{run}",
        stderr_path=settings.data_dir.resolve() / "logs" / "legacy-demo.log")
    stop = asyncio.Event()
    try:
        async with FlagStore(settings, topic=f"{FLAGS_TOPIC}.demo") as flags, AssessmentStore(settings) as store, \
                HttpLegacyBackend(legacy_http.url) as legacy, MismatchLog(settings) as mismatches, \
                ReverseSync(settings, group_id=f"{_DEMO_GROUP}-reverse") as reverse:
            sync_task = asyncio.create_task(reverse.run(stop))
            await flags.update("demo", enable_assessment_store=True, enable_dual_mode=True,
                               migration_percentage=percentage, enable_shadow_comparison=True)
            observer = ShadowObserver(mismatches, timeout_s=10.0)
            router = MigrationRouter(store, legacy, flags, shadow=observer)
            ids = [f"demo-{run}-{i}" for i in range(count)]
            sides = {aid: router.side_for(aid) for aid in ids}
            finals = await asyncio.gather(*(_lifecycle(router, i, aid) for i, aid in enumerate(ids)))

            async def both_sides() -> tuple[list[Assessment | None], list[Assessment | None]]:
                in_store = await asyncio.gather(*(store.find_state(a) for a in ids))
                on_legacy = await asyncio.gather(*(legacy.find_state(a) for a in ids))
                return list(in_store), list(on_legacy)

            # The tap -> bridge -> processor path and the reverse sync take a moment: wait (bounded)
            # until both sides hold every assessment in its final state.
            deadline = time.monotonic() + 30
            while True:
                in_store, on_legacy = await both_sides()
                done = all(s is not None and s.state is f.state for s, f in zip(in_store, finals, strict=True)) and all(
                    x is not None and x.state is f.state for x, f in zip(on_legacy, finals, strict=True))
                if done or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            await observer.drain(30)
            stop.set()
            await sync_task
            _print_results(out, count, percentage, t0, ids, finals, sides, in_store, on_legacy)
            to_store = sum(side is Side.STORE for side in sides.values())
            st = observer.stats
            ok = done and st.mismatched == 0 and st.missing == 0 and st.shadow_errors == 0
            out.print(f"routed: {to_store} to the store, {count - to_store} to legacy (sticky per assessment); "
                      f"both sides hold all {count}: {'yes' if done else 'NO'}", highlight=False)
            out.print(f"shadow comparison: {st.scheduled} calls observed on the other side: {st.matched} matched, "
                      f"{st.inconclusive} overtaken, {st.mismatched} mismatched, {st.missing} missing "
                      "(`assessment-store bridge shadow` lists kept mismatches)", highlight=False)
            rolled = await run_rollout_demo(settings, store, legacy_http.url, out) if rollout else True
    finally:
        stop.set()
        await legacy_http.stop()
    return ok and rolled


def _print_results(out: Console, count: int, percentage: float, t0: float, ids: list[str], finals: list[Assessment],
                   sides: dict[str, Side], in_store: list[Assessment | None], on_legacy: list[Assessment | None]) -> None:
    colour = {State.COMPLETED: "green", State.FAILED: "red"}
    t = Table(title=f"dual mode at {percentage:g} %: {count} assessments through MigrationRouter "
                    f"({time.monotonic() - t0:.1f} s, legacy = the Node sample service)")
    for col in ("assessment id", "served by", "final state", "in the store (projection)", "on legacy", "result / error"):
        t.add_column(col)
    for aid, f, s, x in zip(ids, finals, in_store, on_legacy, strict=True):
        detail = json.dumps(f.result_data) if f.state is State.COMPLETED else f.error_message
        t.add_row(aid, sides[aid].value, f"[{colour.get(f.state, 'white')}]{f.state.value}[/]",
                  "-" if s is None else f"{s.state.value} v{s.version}",
                  "-" if x is None else x.state.value, str(detail))
    out.print(t)


DEMO_STEPS: tuple[float, ...] = (10, 50, 100)
_WINDOW_S = 1.0
_SOAK_S = 2.0
_BUDGET_S = 25.0
"""The whole rollout's time limit: about 3 steps x (window alignment + soak + grace), with room to spare."""


async def _traffic(router: MigrationRouter, stop: asyncio.Event) -> None:
    while not stop.is_set():
        aid = f"rollout-demo-{uuid.uuid4().hex[:12]}"
        try:
            await router.create_assessment({"subject": "rollout demo"}, assessment_id=aid)
            await router.get_state(aid)
        except Exception:
            await asyncio.sleep(0.05)  # counted by the router's observer; this loop only makes traffic


async def run_rollout_demo(settings: Settings, store: AssessmentStore, legacy_url: str, out: Console,
                           *, instances: int = 2) -> bool:
    """Run it and print one line per decision; returns whether the rollout completed."""
    flags_topic, rollout_topic = f"{FLAGS_TOPIC}.demo", f"{ROLLOUT_TOPIC}.demo"
    observations_topic = f"{OBSERVATIONS_TOPIC}.demo"
    earlier = await read_rollout(settings, topic=rollout_topic)
    if earlier.status is not None and not earlier.terminal:
        # An earlier demo interrupted mid-rollout: a new rollout would resume it instead of starting over.
        await manual_rollback(settings, reason="demo: an earlier demo's unfinished rollout", topic=rollout_topic,
                              flags_topic=flags_topic)
    plan = RolloutPlan(steps=DEMO_STEPS, first_soak_s=_SOAK_S, soak_s=_SOAK_S, window_s=_WINDOW_S, grace_s=0.25,
                       thresholds=GateThresholds(min_calls=3, min_compared=1000))
    out.print(f"compressed rollout {' -> '.join(f'{s:g} %' for s in DEMO_STEPS)}: {_WINDOW_S:g} s windows, "
              f"{_SOAK_S:g} s soak per step, {instances} router instances publishing their windows", highlight=False)
    t0 = time.monotonic()
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        legacy = await stack.enter_async_context(HttpLegacyBackend(legacy_url))
        tasks: list[asyncio.Task[None]] = []
        for i in range(instances):
            flags = await stack.enter_async_context(FlagStore(settings, topic=flags_topic))
            pub = await stack.enter_async_context(ObservationPublisher(
                settings, window_s=_WINDOW_S, topic=observations_topic, instance_id=f"demo-router-{i}"))
            router = MigrationRouter(store, legacy, flags, sync_before_serve=False, observer=pub)
            tasks.append(asyncio.create_task(_traffic(router, stop)))

        def line(ev: RolloutEvent, _state: RolloutState) -> None:
            if ev.type != "lease":
                out.print(f"  rollout {event_line(ev)}", highlight=False, soft_wrap=True)

        controller = RolloutController(settings, plan, topic=rollout_topic, observations_topic=observations_topic,
                                       flags_topic=flags_topic, on_event=line, new=True)
        try:
            final = await asyncio.wait_for(controller.run(), _BUDGET_S)
        except TimeoutError:
            final = controller.state
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    done = final.status == "complete"
    out.print(f"rollout {'complete' if done else 'NOT complete (' + str(final.status) + ')'} in "
              f"{time.monotonic() - t0:.1f} s (`assessment-store migrate status` shows a real one)", highlight=False)
    return done
