"""How fast the dashboard's page paints with a day of history at 10 s resolution.

    .venv/bin/python -m bench.dashboard [--rounds 5] [--port 29370] [--groups 6]

No broker needed: the page is served by the product's own app over a ``Sampler`` that is never
started, its history pre-filled with a day (8,640 points) of every series a store with ``--groups``
consumer groups of 6 partitions each would record. Timed in headless Chromium (system chromedriver),
in turns, each load in a fresh tab with the session cookie already set:

* ``empty``: the same page over an empty history (the baseline);
* ``day``: the page over the full day.

Per variant: first contentful paint (``performance`` paint entries), DOMContentLoaded, and
"drawn" (the ``dashboard-drawn`` mark: the history fetched, parsed and every chart drawn); then the
ratios of ``day`` to ``empty`` measured in the same run. The goal: first paint <= 1 s with a day.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from assessment_store import Settings
from assessment_store.monitoring import Sampler, dashboard_app

console = Console()
TOKEN = "bench-dashboard-token"
DAY_POINTS = 8640


def _fill(sampler: Sampler, groups: int) -> None:
    rng = random.Random(7)
    now = time.time()
    topics = ["assessments.commands", "assessments.events", "assessments.outcomes", "assessments.commands.dlq",
              "legacy.assessment-events", "legacy.assessment-events.dlq", "legacy.assessment-events.reverse"]
    for i in range(DAY_POINTS):
        at = now - (DAY_POINTS - i) * 10.0
        v: dict[str, float | None] = {}
        wave = 1 + math.sin(i / 300)
        for g in range(groups):
            name = f"assessment-store-group-{g}"
            total = 0.0
            for p in range(6):
                lag = max(0.0, rng.gauss(40 * wave, 15))
                total += lag
                v[f"p:{name}:assessments.events:{p}:lag"] = lag
                v[f"p:{name}:assessments.events:{p}:lag_s"] = lag / 50
            v[f"g:{name}:lag"] = total
            v[f"g:{name}:lag_s"] = total / 300
            v[f"g:{name}:status"] = 0.0
        for t in topics:
            v[f"t:{t}:rate"] = max(0.0, rng.gauss(200 * wave, 30))
        v["cmd:p50"], v["cmd:p95"], v["cmd:p99"] = 0.012 * wave, 0.03 * wave, 0.05 * wave
        v["proj:anomalies"], v["mig:mismatches"], v["mig:percentage"] = 3.0, float(i // 1000), 25.0
        sampler.history.append(at, v)


@contextlib.contextmanager
def _serve(sampler: Sampler, settings: Settings, port: int) -> Iterator[str]:
    config = uvicorn.Config(dashboard_app(settings, sampler), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


_TIMINGS = """
const nav = performance.getEntriesByType('navigation')[0];
const fcp = performance.getEntriesByName('first-contentful-paint')[0];
const fp = performance.getEntriesByName('first-paint')[0];
const drawn = performance.getEntriesByName('dashboard-drawn')[0];
return {fcp: fcp ? fcp.startTime : null, fp: fp ? fp.startTime : null,
        dcl: nav.domContentLoadedEventEnd, drawn: drawn ? drawn.startTime : null};
"""


def _load(driver: Any, url: str) -> dict[str, float]:
    driver.get("about:blank")
    driver.get(url + "/")
    deadline = time.monotonic() + 30
    while driver.execute_script("return document.body.dataset.ready") != "1":
        if time.monotonic() > deadline:
            raise RuntimeError("the page never finished drawing")
        time.sleep(0.01)
    result: dict[str, float] = driver.execute_script(_TIMINGS)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--port", type=int, default=29370)
    parser.add_argument("--groups", type=int, default=6)
    args = parser.parse_args()
    from tests.test_dashboard import chromium_driver

    settings = Settings(api_read_token=SecretStr(TOKEN))
    empty = Sampler(settings, scrape_urls=(), resolution_s=10, history_s=86_400)
    day = Sampler(settings, scrape_urls=(), resolution_s=10, history_s=86_400)
    started = time.perf_counter()
    _fill(day, args.groups)
    console.print(f"history: {len(day.history)} points x {len(day.history.series_names)} series "
                  f"(filled in {time.perf_counter() - started:.1f} s)")
    driver = chromium_driver()
    results: dict[str, list[dict[str, float]]] = {"empty": [], "day": []}
    try:
        with _serve(empty, settings, args.port) as empty_url, _serve(day, settings, args.port + 1) as day_url:
            for url in (empty_url, day_url):
                driver.get(f"{url}/?token={TOKEN}")  # sets each origin's cookie; also warms the cache
            for _ in range(args.rounds):
                for name, url in (("empty", empty_url), ("day", day_url)):
                    results[name].append(_load(driver, url))
    finally:
        driver.quit()
    table = Table(title=f"dashboard page, {args.rounds} loads each (median ms)")
    for col in ("variant", "first contentful paint", "DOMContentLoaded", "drawn (history + charts)"):
        table.add_column(col, justify="right")
    med: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        med[name] = {k: statistics.median(r[k] for r in runs if r[k] is not None) for k in ("fcp", "dcl", "drawn")}
        table.add_row(name, f"{med[name]['fcp']:.0f}", f"{med[name]['dcl']:.0f}", f"{med[name]['drawn']:.0f}")
    table.add_row("day / empty", *(f"{med['day'][k] / med['empty'][k]:.2f}x" for k in ("fcp", "dcl", "drawn")))
    console.print(table)
    ok = med["day"]["fcp"] <= 1000
    console.print(f"first paint with a day of history: {med['day']['fcp']:.0f} ms "
                  f"({'within' if ok else 'OVER'} the 1 s budget)")


if __name__ == "__main__":
    main()
