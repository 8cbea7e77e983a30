"""The whole migration end to end under continuous load, on the real stack and the Node sample legacy service.

Writers drive assessments through ``MigrationRouter`` instances (legacy: ``HttpLegacyBackend``; store: the real
client behind a fault dial) while legacy's older data is exported and validated, a gated rollout advances, a
store fault makes it hold and roll back on its own, a new rollout goes to 100 %, the export is imported, the final
validation passes and the cleanup archives and removes legacy's copies. Every assessment a writer touched ends in
the store exactly as the writer last left it.

Run with ``-s`` to see the decision log (every rollout event with the readings it was taken on).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from assessment_store import (
    Assessment,
    AssessmentStore,
    BackendError,
    DatabaseUnavailable,
    Settings,
    State,
    StoreUsageError,
)
from assessment_store.migration import (
    FlagStore,
    GateThresholds,
    HttpLegacyBackend,
    MigrationRouter,
    ObservationPublisher,
    ReverseSync,
    RolloutController,
    RolloutPlan,
    RolloutState,
    ValidationVerdict,
    cleanup_legacy,
    event_line,
    export_legacy,
    import_export,
    reverse_topic_spec,
    start_legacy_http,
    validate_after,
    validate_before,
)
from assessment_store.projections import connect
from assessment_store.streams import ensure_topics
from assessment_store.testing import eventually, start_group_at_end
from tests.test_migrate_validate import _record, _restore

WINDOW_S = 1.0
WRITERS = 3
LANES = 4
"""Lifecycles each writer (router instance) has in flight: enough store calls per 1 s window on a loaded machine."""
SEEDED = 200
FINAL = (State.COMPLETED, State.FAILED, State.CANCELLED)


class FaultDial:
    """The real store behind a switch: while ``down``, every call but ``get_history`` raises the store's own
    ``DatabaseUnavailable`` before reaching the store (so a failed call certainly changed nothing). Reads of a
    history stay up, as they do when only the command path is down (the processor stopped): the router's
    sync-before-serve then still checks that legacy holds the store's changes before legacy serves them."""

    def __init__(self, store: AssessmentStore) -> None:
        self.store = store
        self.down = False
        self.injected = 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.store, name)
        if name == "get_history":
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.injected += 1
                raise DatabaseUnavailable("injected store fault")
            return await target(*args, **kwargs)

        return call


@dataclass
class Expected:
    """What a writer last did to an assessment (the state it must end in)."""

    state: State
    progress: int
    message: str | None
    request: Any
    result: Any = None
    error: str | None = None


@dataclass
class Writers:
    """``WRITERS`` router instances, each driving ``LANES`` lifecycles at a time (asyncio tasks) until stopped."""

    prefix: str
    routers: list[MigrationRouter]
    expected: dict[str, Expected] = field(default_factory=dict)
    retries: int = 0
    refusals: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._write(f"{k}.{lane}", r))
                      for k, r in enumerate(self.routers) for lane in range(LANES)]

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 120)

    async def _do(self, router: MigrationRouter, aid: str, target: State | None,
                  call: Callable[[], Awaitable[object]]) -> None:
        """Until the call succeeds: a backend error (the fault, legacy not yet synced) changed nothing and is
        retried; a refusal is retried while the side now serving it catches up (the bridge or reverse sync
        delivering the other side's last change), unless the assessment already is where the call leads."""
        deadline = time.monotonic() + 60
        while True:
            try:
                await call()
                return
            except BackendError:
                self.retries += 1
            except StoreUsageError as e:
                self.refusals.append(f"{aid}: {e}")
                self.retries += 1
                if target is not None:
                    try:
                        if (await router.get_state(aid)).state is target:
                            return
                    except (BackendError, StoreUsageError):
                        pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{aid}: no success within 60 s ({self.refusals[-3:]})")
            await asyncio.sleep(0.05)  # pacing between attempts, not synchronization

    async def _write(self, k: str, router: MigrationRouter) -> None:
        rnd = random.Random(k)
        n = 0
        while not self.stop.is_set():
            aid = f"{self.prefix}w{k}-{n}"
            n += 1
            request = {"writer": k, "n": n}
            await self._do(router, aid, State.PENDING, lambda: router.create_assessment(request, assessment_id=aid))
            self.expected[aid] = Expected(State.PENDING, 0, None, request)
            if rnd.random() < 0.1:
                continue  # left pending
            await self._do(router, aid, State.PROCESSING, lambda: router.start_assessment(aid))
            self.expected[aid] = Expected(State.PROCESSING, 0, None, request)
            for p in (30, 60):
                await self._do(router, aid, None, lambda p=p: router.update_progress(aid, p, f"at {p}"))  # type: ignore[misc]
                self.expected[aid] = Expected(State.PROCESSING, p, f"at {p}", request)
            await self._do(router, aid, None, lambda: router.get_state(aid))
            match rnd.randrange(10):
                case 0:
                    continue  # left processing
                case 1:
                    await self._do(router, aid, State.FAILED, lambda: router.fail_assessment(aid, f"boom {n}"))
                    self.expected[aid] = Expected(State.FAILED, 60, "at 60", request, error=f"boom {n}")
                case 2:
                    await self._do(router, aid, State.CANCELLED, lambda: router.cancel_assessment(aid))
                    self.expected[aid] = Expected(State.CANCELLED, 60, "at 60", request)
                case _:
                    await self._do(router, aid, State.COMPLETED, lambda: router.complete_assessment(aid, {"score": n}))
                    self.expected[aid] = Expected(State.COMPLETED, 100, "at 60", request, result={"score": n})


def _matches(got: Assessment | None, want: Expected) -> bool:
    return got is not None and (got.state, got.progress, got.request_data, got.result_data, got.error_message) == (
        want.state, want.progress, want.request, want.result, want.error) and (
        want.state in FINAL or got.message == want.message)


def _plan() -> RolloutPlan:
    return RolloutPlan(steps=(25, 50, 100), first_soak_s=1.5, soak_s=1.5, window_s=WINDOW_S, grace_s=0.3,
                       thresholds=GateThresholds(min_calls=5, min_compared=5))


def _decisions(state: RolloutState) -> list[str]:
    return [e.type for e in state.events if e.type not in ("lease", "command")]


def _log(title: str, state: RolloutState) -> None:
    print(f"\n--- decision log: {title} (rollout {state.rollout_id}) ---")
    for e in state.events:
        if e.type in ("lease", "command"):
            continue
        print(event_line(e))
        for r in e.readings:
            gates = ", ".join(f"{g['gate']}={g['value']}:{g['verdict']}" for g in r.get("gates", []))
            print(f"    window {r['windowStart']} instances {r['instances']} calls {r['calls']} errors {r['errors']} "
                  f"failures {r['failures']} legacyCalls {r['legacyCalls']} -> {r['verdict']} [{gates}]")


async def _store_rows(settings: Settings, prefix: str) -> int:
    conn = await connect(settings)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM projection.assessments WHERE assessment_id LIKE $1 || '%'", prefix))
    finally:
        await conn.close()


@pytest.mark.stack
async def test_the_whole_migration_under_load_loses_nothing(
        stack_settings: Settings, store: AssessmentStore, tmp_path: Path) -> None:
    """Under 3 writers: export + before-validation pass, a rollout holds then rolls back on a store fault, a new one
    reaches 100 %, import + final validation pass, cleanup removes legacy's copies; every assessment ends as written."""
    s = stack_settings
    run = uuid.uuid4().hex[:8]
    p = f"mig-{run}-"
    flags_topic, obs_topic, rollout_topic = (f"test.e2e-{kind}.{run}" for kind in ("flags", "obs", "rollout"))
    await ensure_topics(s, [reverse_topic_spec(s)])
    legacy_proc = await start_legacy_http(s, group=f"legacy-reverse-mig-{run}", emitter_id=f"legacy-http-mig-{run}",
                                          stderr_path=tmp_path / "legacy-http.stderr")
    reverse_group = f"reverse-mig-{run}"
    await start_group_at_end(s, reverse_group, s.events_topic)
    dial = FaultDial(store)
    flag_stores: list[FlagStore] = []
    publishers: list[ObservationPublisher] = []
    stop_reverse = asyncio.Event()
    reverse = ReverseSync(s, group_id=reverse_group)
    await reverse.start()
    reverse_task = asyncio.create_task(reverse.run(stop_reverse))
    legacy = HttpLegacyBackend(legacy_proc.url)
    await legacy.__aenter__()
    writers: Writers | None = None
    t0 = time.monotonic()

    def phase(name: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f} s] {name}")

    try:
        # Legacy's history before the migration: seeded records, exported and validated later.
        seeded = [_record(f"{p}seed-{i}", ("pending", "processing", "completed")[i % 3],
                          progress=(0, 40, 100)[i % 3], request={"seed": i},
                          result={"score": i} if i % 3 == 2 else None, created=i, updated=i + 1,
                          duration=1000 if i % 3 == 2 else None) for i in range(SEEDED)]
        await _restore(legacy_proc.url, seeded)

        async with FlagStore(s, topic=flags_topic) as flags:
            # Without fallback a store failure reaches the writer, who retries: no call lands on legacy for an
            # assessment legacy may not hold yet.
            await flags.update("e2e", enable_legacy_fallback=False)
        routers = []
        for i in range(WRITERS):
            fs = FlagStore(s, topic=flags_topic)
            await fs.start()
            flag_stores.append(fs)
            pub = ObservationPublisher(s, window_s=WINDOW_S, topic=obs_topic, instance_id=f"router-{run}-{i}")
            await pub.start()
            publishers.append(pub)
            routers.append(MigrationRouter(dial, legacy, fs, observer=pub, sync_timeout_s=5.0))
        writers = Writers(p, routers)
        writers.start()

        phase("writers running")
        # 1. Export the legacy history and validate it against legacy while the writers write.
        export_dir = tmp_path / "export"
        manifest = await export_legacy(s, legacy_proc.url, export_dir, id_prefix=f"{p}seed-", progress=False)
        assert manifest.assessments.records == SEEDED
        before = await validate_before(s, export_dir, buckets=64)
        assert before.verdict is ValidationVerdict.PASS, before.findings

        phase("export validated before")
        # 2. A rollout; at 50 % the store fails every call: hold, then rollback, and every instance on legacy.
        first = RolloutController(s, _plan(), topic=rollout_topic, observations_topic=obs_topic,
                                  flags_topic=flags_topic)
        task = asyncio.create_task(first.run())
        await eventually(lambda: asyncio.sleep(0, first.state.step), lambda st: st == 1, timeout_s=60,
                         what="the rollout at its second step (50 %)")
        dial.down = True
        fault_at = time.time()
        state = await asyncio.wait_for(task, 60)
        _log("first rollout, store fault at step 1", state)
        assert state.status == "rolled_back"
        assert _decisions(state) == ["start", "advance", "hold", "rollback"], _decisions(state)
        hold, rollback = (next(e for e in state.events if e.type == t) for t in ("hold", "rollback"))
        assert fault_at < hold.at_s < rollback.at_s and hold.step == rollback.step == 1
        # The readings are the windows the streaks counted: conclusive ones, all at the error rate's rollback level.
        assert len(hold.readings) == 2 and len(rollback.readings) == 3
        assert all(r["verdict"] == "rollback" and r["errorRate"] > 0.10 for r in hold.readings + rollback.readings)
        assert "error_rate" in rollback.reason
        await eventually(lambda: asyncio.sleep(0, [f.current().enable_assessment_store for f in flag_stores]),
                         lambda on: not any(on), timeout_s=5, what="every router instance on legacy")
        # Traffic goes on, on legacy, while the store is still down.
        calls = sum(r.stats.calls["legacy"] for r in routers)
        await eventually(lambda: asyncio.sleep(0, sum(r.stats.calls["legacy"] for r in routers)),
                         lambda n: n >= calls + 50, timeout_s=30, what="writers served by legacy")
        dial.down = False

        phase("rolled back, fault removed")
        # 3. A new rollout (the last one ended: --new) goes to 100 %.
        second = RolloutController(s, _plan(), topic=rollout_topic, observations_topic=obs_topic,
                                   flags_topic=flags_topic, new=True)
        state = await asyncio.wait_for(second.run(), 90)
        _log("second rollout (--new)", state)
        assert state.status == "complete" and _decisions(state) == ["start", "advance", "advance", "complete"]
        assert state.rollout_id != rollback.rollout_id
        now = flag_stores[0].current()
        assert (now.enable_assessment_store, now.migration_percentage) == (True, 100.0)
        # Some traffic at 100 %, then the writers stop.
        calls = sum(r.stats.calls["store"] for r in routers)
        await eventually(lambda: asyncio.sleep(0, sum(r.stats.calls["store"] for r in routers)),
                         lambda n: n >= calls + 50, timeout_s=30, what="writers served by the store at 100 %")
        await writers.finish()
        expected = dict(writers.expected)
        print(f"\nwriters: {len(expected)} assessments, {writers.retries} retried calls, "
              f"{len(writers.refusals)} refusals; store calls {sum(r.stats.calls['store'] for r in routers)}, "
              f"legacy calls {sum(r.stats.calls['legacy'] for r in routers)}; injected faults {dial.injected}" + "".join(f"\n    refused, then retried: {r}" for r in writers.refusals))
        assert len(expected) >= 100

        phase("writers stopped")
        # Both sides have converged on what the writers did (the bridge and the reverse sync drained).
        ids = sorted(expected)

        gate = asyncio.Semaphore(20)

        async def bounded(call: Awaitable[Assessment | None]) -> Assessment | None:
            async with gate:
                return await call

        async def both_sides() -> list[str]:
            got = await asyncio.gather(*(bounded(store.find_state(a)) for a in ids))
            leg = await asyncio.gather(*(bounded(legacy.find_state(a)) for a in ids))
            return [a for a, g, lg in zip(ids, got, leg, strict=True)
                    if not (_matches(g, expected[a]) and _matches(lg, expected[a]))]

        behind = await eventually(both_sides, lambda bad: not bad, timeout_s=60, what="both sides converged")
        assert behind == []

        phase("both sides converged")
        # 4. Import the export (the seeded history) and validate legacy against the store over everything.
        imported = await import_export(s, export_dir, progress=False, buckets=64)
        assert imported.validation.verdict is ValidationVerdict.PASS, imported.validation.findings
        await eventually(lambda: _store_rows(s, p), lambda n: n == len(expected) + SEEDED, timeout_s=30,
                         what="every assessment in the projection")
        final = await validate_after(s, legacy_proc.url, id_prefix=p, buckets=256, deep=True)
        print(f"final validation: {final.verdict.value}, legacy {final.legacy_count}, store {final.store_count}, "
              f"findings {final.total_findings}")
        assert final.verdict is ValidationVerdict.PASS, final.findings
        assert final.legacy_count == final.store_count == len(expected) + SEEDED

        phase("final validation passed")
        # Independently of the validator: each writer's assessment as the writer left it, each seeded one as seeded.
        got = await asyncio.gather(*(bounded(store.get_state(a)) for a in ids))
        different = [(a, g) for a, g in zip(ids, got, strict=True) if not _matches(g, expected[a])]
        assert different == [], different[:5]
        for rec in seeded:
            st = await store.get_state(rec["assessmentId"])
            assert (st.state.value.lower(), st.progress, st.request_data, st.result_data) == (
                rec["status"], rec["progress"], rec["request"], rec["result"]), rec

        phase("independent check passed")
        # 5. Cleanup: archived, verified, every migrated assessment removed from legacy.
        done = await cleanup_legacy(s, legacy_proc.url, tmp_path / "archive", hold=timedelta(0),
                                    validation_max_age=timedelta(hours=1), id_prefix=p, flags_topic=flags_topic)
        assert (done.purged, done.kept_not_in_store) == (len(expected) + SEEDED, 0)
        async with httpx.AsyncClient(base_url=legacy_proc.url) as c:
            left = (await c.get("/export/counts", params={"idPrefix": p})).json()["total"]
        assert left == 0
        archived = json.loads((tmp_path / "archive" / "manifest.json").read_text())
        assert archived["verified"] and archived["files"]["assessments"]["records"] == len(expected) + SEEDED
        phase("cleanup done")
    finally:
        if writers is not None and not writers.stop.is_set():
            writers.stop.set()
            await asyncio.gather(*writers.tasks, return_exceptions=True)
        for pub in publishers:
            await pub.stop()
        for fs in flag_stores:
            await fs.stop()
        stop_reverse.set()
        await asyncio.wait_for(reverse_task, 30)
        await reverse.stop()
        await legacy.__aexit__(None, None, None)
        await legacy_proc.stop()
