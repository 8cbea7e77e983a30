"""What Prometheus metrics cost the command path: sustained commands/s with metrics on vs off.

    .venv/bin/python -m bench.metrics [--preload 20000] [--rounds 2] [--scrape-interval 1]

Starts a private stack (data in .data/bench-metrics-<port base>, ports 29692.. unless ``--port-base``
moves them). Each round runs the sustained-rate measure of ``bench.commands`` (N commands pre-loaded
on the commands topic with the processor stopped, then timed from the first new event in the
projection to the last) twice, in turns: processor and projector started with metrics off
(``metrics_port_base=0``: no /metrics server and no histogram fed) and with metrics on (both
serving /metrics, scraped every ``--scrape-interval`` s throughout, far more often than a
Prometheus would). Prints each run and the ratio of the means, on / off (goal >= 97 %), and beside it the CPU the
processor and projector spent per command over each drain (from /proc): throughput on two shared
cores swings by +-10 % from run to run, the CPU per command much less, so the second ratio (off / on:
the share of the work left once metrics are on) is the steadier reading of the same cost.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.table import Table

from assessment_store import AssessmentStore, Settings
from assessment_store.stack import Stack
from assessment_store.testing import isolated_settings, running_stack

from .commands import _encoded_commands, sustained_rate

ROOT = Path(__file__).resolve().parent.parent
console = Console()


class Scraper:
    """Scrapes every URL each ``interval`` s in a thread until stopped; counts the scrapes that worked."""

    def __init__(self, urls: list[str], interval: float) -> None:
        self.urls, self.interval = urls, interval
        self.ok = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for url in self.urls:
                try:
                    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback URLs we built
                        resp.read()
                    self.ok += 1
                except OSError:
                    pass

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def run_variant(settings: Settings, n: int, ids: list[str],
                      scrape_interval: float | None) -> tuple[float, float, int]:
    """(commands/s, processor + projector CPU ms per command, scrapes) with both (re)started under ``settings``."""
    # Fresh commands (new command ids) every run: re-sent ones would be duplicates, with no event.
    records = await _encoded_commands(n, ids)
    stack = Stack(settings)
    await asyncio.to_thread(stack.down, ["processor", "projector"], lambda _m: None)
    await asyncio.to_thread(stack.up, ["projector"], lambda _m: None)
    if scrape_interval is None:
        run = await sustained_rate(settings, stack, records)
        return run.rate, _pipeline_cpu_ms(run.cpu_s, n), 0
    urls = [f"http://{settings.metrics_host}:{settings.service_metrics_port(s)}/metrics" for s in ("processor", "projector")]
    with Scraper(urls, scrape_interval) as scraper:
        run = await sustained_rate(settings, stack, records)
    return run.rate, _pipeline_cpu_ms(run.cpu_s, n), scraper.ok


def _pipeline_cpu_ms(cpu_s: dict[str, float], n: int) -> float:
    """CPU ms per command of the two processes that feed metrics (the broker and PostgreSQL do the same either way)."""
    return (cpu_s["processor"] + cpu_s["projector"]) * 1000 / n


async def measure(on: Settings, args: argparse.Namespace) -> None:
    off = on.model_copy(update={"metrics_port_base": 0})
    async with AssessmentStore(on) as store:
        ids = [await store.create_assessment({"bench": i}, assessment_id=f"bench-{i}") for i in range(200)]
        for aid in ids:
            await store.start_assessment(aid)
    await run_variant(off, max(1000, args.preload // 10), ids, None)  # warm-up (broker JIT, caches)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpus: dict[str, list[float]] = {"off": [], "on": []}
    t = Table(title=f"sustained commands/s, {args.preload} pre-loaded commands per run (processor + projector)")
    for col in ("round", "metrics", "commands/s", "CPU ms/command (processor + projector)", "scrapes"):
        t.add_column(col)
    for r in range(1, args.rounds + 1):
        # Alternating, off first in odd rounds and on first in even ones: drift of the machine cancels out.
        for variant in (("off", "on") if r % 2 else ("on", "off")):
            rate, cpu_ms, scrapes = await run_variant(on if variant == "on" else off, args.preload, ids,
                                                      args.scrape_interval if variant == "on" else None)
            rates[variant].append(rate)
            cpus[variant].append(cpu_ms)
            t.add_row(str(r), variant, f"{rate:,.0f}", f"{cpu_ms:.3f}", str(scrapes) if variant == "on" else "-")
    ratio = statistics.mean(rates["on"]) / statistics.mean(rates["off"])
    cpu_ratio = statistics.median(cpus["off"]) / statistics.median(cpus["on"])
    t.add_row("mean", "on / off", f"{ratio:.1%}", f"off / on (medians) {cpu_ratio:.1%}", "goal >= 97 %")
    console.print(t)


def main(args: argparse.Namespace) -> None:
    settings = isolated_settings(ROOT / ".data" / f"bench-metrics-{args.port_base}", port_base=args.port_base)
    Stack(settings).purge(log=lambda _m: None)
    with running_stack(settings) as s:
        asyncio.run(measure(s, args))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preload", type=int, default=20_000, help="commands per sustained-rate run")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of one run off and one on")
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between scrapes while on")
    parser.add_argument("--port-base", type=int, default=29692,
                        help="Kafka, controller and PostgreSQL ports base..base+2, /metrics base+20..+23.")
    main(parser.parse_args())
