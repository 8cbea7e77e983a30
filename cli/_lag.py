"""``assessment-store lag`` and ``lag-monitor``: consumer-group lag for every group on the cluster."""

from __future__ import annotations

from typing import Annotated

import typer

from assessment_store.core import Settings

from ._console import out
from ._console import run_cli as _run
from ._options import JsonFlag, PidFile, mark_ready
from ._root import app


@app.command("lag")
def lag(
    group: Annotated[str, typer.Option("--group", help="Only groups matching this glob, e.g. 'assessment-*'.")] = "*",
    topic: Annotated[str | None, typer.Option("--topic", help="Only partitions of this topic.")] = None,
    as_json: JsonFlag = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh in place until Ctrl-C.")] = False,
    interval: Annotated[float | None, typer.Option(min=0.1, help="Seconds between --watch refreshes "
                                                   "(default: ASSESSMENT_STORE_LAG_POLL_INTERVAL_S).")] = None,
) -> None:
    """Consumer-group lag per partition (offsets and seconds) and status, for every group on the cluster."""
    from assessment_store.monitoring import run_lag_command

    try:
        _run(run_lag_command(Settings(), out, group_glob=group, topic=topic, as_json=as_json, watch=watch,
                             interval_s=interval))
    except KeyboardInterrupt:
        pass  # the way out of --watch


@app.command("lag-monitor")
def lag_monitor(
    host: Annotated[str | None, typer.Option(help="Default: ASSESSMENT_STORE_LAG_MONITOR_HOST (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Default: ASSESSMENT_STORE_LAG_MONITOR_PORT (9309).")] = None,
    pid_file: PidFile = None,
) -> None:
    """Poll every group's lag and serve it at /metrics (Prometheus) until SIGTERM."""
    from assessment_store.monitoring import serve_lag_metrics

    _run(serve_lag_metrics(Settings(), host=host, port=port, on_ready=lambda: mark_ready(pid_file)))
