"""Shadow comparison benchmark: what observing every call on the other side costs the caller.

    .venv/bin/python -m bench.shadow [--lifecycles 300] [--concurrency 20] [--rounds 2]

Starts a private stack (data in .data/bench-shadow, ports 29592-29594) with the reverse sync, and the
Node sample legacy service behind HTTP (tap attached, importing the reverse topic). Then, through
``MigrationRouter`` in dual mode, runs lifecycles (create, start, progress, complete, get) with
``--concurrency`` in flight, and measures each call's latency as the caller sees it:

* served by the store (percentage 100), shadow comparison off, then on (observed on legacy);
* served by legacy (percentage 0), shadow comparison off, then on (observed on the store).

Off and on alternate for ``--rounds`` rounds on fresh assessments, so drift on a shared machine hits
both; the shadow runs are drained (every observation concluded) before the next run starts. Prints
p50/p95/p99 per configuration and the ratio on/off (the goal: the shadow adds none of its own latency;
what remains is the CPU its reads take from the same two cores), plus the observations' verdicts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

from assessment_store import AssessmentStore, Settings
from assessment_store.testing import isolated_settings, running_stack
from assessment_store.migration import (
    FlagStore,
    HttpLegacyBackend,
    MigrationRouter,
    MismatchLog,
    ShadowObserver,
    start_legacy_http,
)
from assessment_store.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
console = Console()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def lifecycles(router: MigrationRouter, count: int, concurrency: int, tag: str) -> list[float]:
    """Latency (ms) of every router call, as the caller sees it."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def timed(call: object) -> None:
        t0 = time.perf_counter()
        await call  # type: ignore[misc]
        latencies.append((time.perf_counter() - t0) * 1000)

    async def one(i: int) -> None:
        async with gate:
            aid = f"bench-shadow-{tag}-{i}"
            await timed(router.create_assessment({"n": i}, assessment_id=aid))
            await timed(router.start_assessment(aid))
            await timed(router.update_progress(aid, 50, "half"))
            await timed(router.complete_assessment(aid, {"score": i}))
            await timed(router.get_state(aid))

    await asyncio.gather(*(one(i) for i in range(count)))
    return latencies


async def measure(s: Settings, args: argparse.Namespace) -> None:
    legacy_http = await start_legacy_http(s, group="bench-shadow-legacy",
                                          stderr_path=s.data_dir.resolve() / "logs" / "legacy-http.log")
    try:
        async with FlagStore(s) as flags, AssessmentStore(s) as store, \
                HttpLegacyBackend(legacy_http.url) as legacy, MismatchLog(s) as mismatches:
            results: dict[tuple[str, bool], list[float]] = {}
            observers: dict[str, ShadowObserver] = {}
            for side, percentage in (("store", 100), ("legacy", 0)):
                observer = observers[side] = ShadowObserver(mismatches, timeout_s=10.0,
                                                            sample_percentage=args.sample)
                router = MigrationRouter(store, legacy, flags, shadow=observer)
                for r in range(args.rounds):
                    for shadow in (False, True):
                        await flags.update("bench", enable_assessment_store=True, enable_dual_mode=True,
                                           migration_percentage=percentage, enable_shadow_comparison=shadow)
                        tag = f"{side}-{int(shadow)}-{r}-{uuid.uuid4().hex[:6]}"
                        got = await lifecycles(router, args.lifecycles, args.concurrency, tag)
                        results.setdefault((side, shadow), []).extend(got)
                        await observer.drain(120)
                        console.print(f"  {side} shadow={'on' if shadow else 'off'} round {r + 1}: "
                                      f"p50 {pct(got, 50):.1f} ms, p95 {pct(got, 95):.1f} ms", highlight=False)
    finally:
        await legacy_http.stop()

    t = Table(title=f"router call latency as the caller sees it, {args.lifecycles} lifecycles x 5 calls x "
                    f"{args.rounds} rounds per row, {args.concurrency} in flight, {args.sample:g} % of calls "
                    f"observed when on ({os.cpu_count()} cores)")
    for col in ("served by", "shadow", "calls", "p50 ms", "p95 ms", "p99 ms", "mean ms", "ratio on/off p50 | p95"):
        t.add_column(col)
    for side in ("store", "legacy"):
        off, on = results[(side, False)], results[(side, True)]
        for shadow, values in ((False, off), (True, on)):
            ratio = (f"{pct(on, 50) / pct(off, 50):.2f} | {pct(on, 95) / pct(off, 95):.2f}" if shadow else "")
            t.add_row(side, "on" if shadow else "off", f"{len(values):,}", f"{pct(values, 50):.1f}",
                      f"{pct(values, 95):.1f}", f"{pct(values, 99):.1f}", f"{statistics.fmean(values):.1f}", ratio)
    console.print(t)
    for side in ("store", "legacy"):
        st = observers[side].stats
        console.print(f"observations of {side}-served calls on the other side: {st.scheduled} scheduled, "
                      f"{st.matched} matched, {st.inconclusive} inconclusive, {st.mismatched} mismatched, "
                      f"{st.missing} missing, {st.shadow_errors} errors, {st.skipped_capacity} skipped; "
                      f"slowest {st.max_observed_ms:.0f} ms", highlight=False)
        console.print("  per call: " + "; ".join(f"{op} {dict(sorted(v.items()))}"
                                                 for op, v in st.by_operation.items()), highlight=False)
    console.print("goal: ratio on/off ~ 1.0 (the observation runs after the answer; what remains is CPU contention)")


def main(args: argparse.Namespace) -> None:
    settings = isolated_settings(ROOT / ".data" / "bench-shadow", port_base=29592, reverse_sync=True)
    Stack(settings).purge(log=lambda _m: None)
    with running_stack(settings) as s:  # the stack manager is synchronous: outside the event loop
        asyncio.run(measure(s, args))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lifecycles", type=int, default=300, help="per run (5 calls each)")
    parser.add_argument("--concurrency", type=int, default=20, help="lifecycles in flight")
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs per side")
    parser.add_argument("--sample", type=float, default=100.0, help="percentage of calls observed when on")
    main(parser.parse_args())
