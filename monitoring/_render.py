"""What ``assessment-store lag`` and ``lag-monitor`` print and serve: a table (refreshed in place
with ``--watch``) or JSON, and the /metrics endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Callable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from assessment_store.core import BackendError, Settings

from ._metrics import lag_registry
from ._model import LagSnapshot
from ._monitor import LagMonitor, observe_once
from ._status import Status

__all__ = ["dashboard_url", "demo_summary", "render_snapshot", "run_lag_command", "serve_lag_metrics"]

_STYLE = {Status.OK: "green", Status.REWIND: "cyan", Status.WARN: "yellow", Status.ERR: "red",
          Status.STALL: "bold red", Status.STOP: "bold red"}


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def render_snapshot(snap: LagSnapshot) -> RenderableType:
    """One row per partition, grouped by consumer group, with a header saying how fresh it is."""
    when = time.strftime("%H:%M:%S", time.localtime(snap.observed_at)) if snap.observed_at else "never"
    head = Text(f"observed at {when}")
    if snap.stale:
        head.append("  STALE: cluster unreachable, last known figures", style="bold red")
    for e in snap.errors if not snap.stale else ():
        head.append(f"\n{e}", style="yellow")
    if snap.clock_skewed:
        head.append(f"\n{snap.clock_skewed} partition(s) with record timestamps in the future (clock skew)",
                    style="yellow")
    t = Table(title=f"{len(snap.groups)} consumer group(s)")
    for col, justify in (("group", "left"), ("source", "left"), ("status", "left"), ("topic", "left"),
                         ("part", "right"), ("committed", "right"), ("end", "right"), ("lag", "right"),
                         ("lag age", "right"), ("rate/s", "right"), ("owned", "left"), ("why", "left")):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for g in snap.groups:
        label = f"{g.group} ({g.state}, {g.members} member(s))"
        t.add_row(label, g.source, Text(g.status.value, style=_STYLE[g.status]), "", "", "", "", str(g.lag),
                  _seconds(g.lag_seconds), "", "", "")
        for p in g.partitions:
            t.add_row("", "", Text(p.status.value, style=_STYLE[p.status]), p.topic, str(p.partition),
                      "-" if p.committed is None else str(p.committed), str(p.end), str(p.lag),
                      _seconds(p.lag_seconds) + ("!" if p.clock_skew else ""),
                      "" if p.consumption_rate is None else f"{p.consumption_rate:.1f}", "yes" if p.owned else "",
                      "" if p.status is Status.OK else p.reason)
    return Group(head, t)


async def run_lag_command(
    settings: Settings, console: Console, *, group_glob: str = "*", topic: str | None = None,
    as_json: bool = False, watch: bool = False, interval_s: float | None = None,
) -> None:
    """``assessment-store lag``: one observation, or with ``watch`` a table refreshed every interval
    until interrupted (Ctrl-C). A one-shot reading of an unreachable cluster raises (non-zero exit)."""
    if not watch:
        snap = await observe_once(settings, group_glob=group_glob, topic=topic)
        if as_json:
            console.print_json(json.dumps(snap.to_json()))
        else:
            console.print(render_snapshot(snap))
        return
    async with LagMonitor(settings, group_glob=group_glob, topic=topic, interval_s=interval_s) as monitor:
        with Live(render_snapshot(monitor.latest), console=console, auto_refresh=False) as live:
            while True:
                async with monitor.updated:
                    await monitor.updated.wait()
                live.update(render_snapshot(monitor.latest), refresh=True)


async def serve_lag_metrics(settings: Settings, *, host: str | None = None, port: int | None = None,
                            on_ready: Callable[[], None] | None = None) -> None:
    """``assessment-store lag-monitor``: poll in the background and serve /metrics until SIGTERM/SIGINT;
    ``on_ready`` is called once /metrics answers (the stack's readiness file)."""
    from prometheus_client import start_http_server

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with LagMonitor(settings) as monitor:
        server, thread = start_http_server(port or settings.lag_monitor_port, addr=host or settings.lag_monitor_host,
                                           registry=lag_registry(lambda: monitor.latest))
        if on_ready is not None:
            on_ready()
        try:
            await stop.wait()
        finally:
            server.shutdown()
            with contextlib.suppress(RuntimeError):
                thread.join(timeout=5)


def dashboard_url(settings: Settings) -> str:
    host = settings.dashboard_host
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{settings.dashboard_port}/"


async def demo_summary(settings: Settings, console: Console, *, group_glob: str = "assessment-store-*") -> None:
    """The end of ``make demo``: one lag reading of the store's own groups, as a table, and where
    the dashboard is served. Never fails the demo: an unreachable broker is said, not raised."""
    try:
        snap = await observe_once(settings, group_glob=group_glob)
    except BackendError as e:
        console.print(f"[yellow]consumer-group lag unavailable: {e}[/]")
    else:
        console.print(render_snapshot(snap))
    console.print(f"dashboard: [bold]{dashboard_url(settings)}[/] (run `assessment-store dashboard` or "
                  "`assessment-store stack up dashboard`, then open it once with ?token=<ASSESSMENT_STORE_API_READ_TOKEN>)")
