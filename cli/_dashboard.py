"""``assessment-store dashboard``: the live dashboard (lag, throughput, projection, bridge, migration,
latency), served by the product on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

from typing import Annotated

import typer

from assessment_store.core import Settings

from ._console import out
from ._console import run_cli as _run
from ._options import PidFile, mark_ready
from ._root import app


@app.command("dashboard")
def dashboard(
    host: Annotated[str | None, typer.Option(help="Default: ASSESSMENT_STORE_DASHBOARD_HOST (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Default: ASSESSMENT_STORE_DASHBOARD_PORT (9300).")] = None,
    pid_file: PidFile = None,
) -> None:
    """Serve the live dashboard until SIGTERM (reads need ASSESSMENT_STORE_API_READ_TOKEN: open /?token=... once)."""
    from assessment_store.monitoring import dashboard_url, serve_dashboard

    settings = Settings()
    if host is not None or port is not None:
        settings = settings.model_copy(update={k: v for k, v in (("dashboard_host", host), ("dashboard_port", port))
                                               if v is not None})
    if settings.api_read_token is None and settings.api_token is None:
        out.print("[yellow]no ASSESSMENT_STORE_API_READ_TOKEN (or _API_TOKEN) is set: the dashboard will refuse "
                  "every request[/]")
    out.print(f"dashboard on {dashboard_url(settings)}")
    try:
        _run(serve_dashboard(settings, on_ready=lambda: mark_ready(pid_file)))
    except KeyboardInterrupt:
        pass
