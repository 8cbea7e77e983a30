"""What every CLI module shares: the consoles, the error-to-exit-code rule, and the foreground loop
of a store process. Separate from ``_cli`` so the role packages' CLIs (``bridge``) can import it at
module level without a cycle."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from assessment_store.core import (
    AssessmentStoreError,
    CodecError,
    Histogram,
    MetricsServer,
    MetricsSource,
    Service,
    Settings,
    StoreUsageError,
    ValidationError,
    WaitTimeout,
    metrics_registry,
    run,
    settle_collection,
    start_metrics_server,
    supervise,
)

from ._options import mark_ready

__all__ = [
    "EXIT_DATAERR",
    "EXIT_REFUSED",
    "EXIT_TEMPFAIL",
    "EXIT_TIMEOUT",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "err",
    "fail",
    "out",
    "run_cli",
    "serve_forever",
]

# The exit codes, one meaning each (docs/cli.md). 2 is never used: click's usage errors exit 2 and
# the entry point turns that into EXIT_USAGE, so a script can tell a typo from a refusal or an outage.
EXIT_REFUSED = 1
"""The store refused the request (no such assessment, illegal transition, version conflict), or a
check the command makes did not hold (a service down, a re-fold refused again)."""
EXIT_TIMEOUT = 3
"""A wait ended before its condition (``wait --timeout``)."""
EXIT_USAGE = 64
"""EX_USAGE: the command line is wrong (unknown option, a value out of its range)."""
EXIT_DATAERR = 65
"""EX_DATAERR: the input data is invalid (a field the store's validation refuses, JSON that does not parse)."""
EXIT_UNAVAILABLE = 69
"""EX_UNAVAILABLE: Kafka, PostgreSQL or the legacy service failed in a way retrying will not mend
(access denied, a value PostgreSQL refuses), or the local stack could not start."""
EXIT_TEMPFAIL = 75
"""EX_TEMPFAIL: Kafka or PostgreSQL is unreachable right now; the same command may succeed later."""

T = TypeVar("T")

# Piped output (CI logs, `| less`) gets a wide fixed width instead of Rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() else 160
out = Console(width=_WIDTH)
err = Console(stderr=True, width=_WIDTH)


def fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def run_cli(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; a store error becomes a one-line message and its exit code (``EXIT_*`` above)."""
    try:
        settings = Settings()
        choice, tls = settings.event_loop, settings.kafka_tls
    except Exception:  # noqa: BLE001 - not lost: the command builds its Settings and reports what is wrong
        choice, tls = "auto", False
    try:
        return run(coro, choice, kafka_tls=tls)
    except WaitTimeout as e:
        fail(str(e), EXIT_TIMEOUT)
    except (ValidationError, CodecError) as e:
        fail(str(e), EXIT_DATAERR)
    except StoreUsageError as e:
        fail(str(e), EXIT_REFUSED)
    except AssessmentStoreError as e:
        fail(str(e), EXIT_TEMPFAIL if e.retriable else EXIT_UNAVAILABLE)


def serve_forever(pid_file: Path | None, name: str, make: Callable[[Settings], Any],
                  stats: MetricsSource | None = None) -> None:
    """Run a store process until SIGTERM/SIGINT; write '<pid-file>.ready' once it consumes.

    ``stats``: the counters ``make`` hands every service it builds (one object for the process, so
    they survive supervised restarts), served on ``/metrics`` at ``settings.own_metrics_port(name)``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logger = logging.getLogger(f"assessment_store.{name}")
    metrics = _serve_metrics(name, stats, logger)
    try:
        _serve_forever(pid_file, name, make, logger)
    finally:
        if metrics is not None:
            metrics.close()


def _serve_metrics(name: str, stats: MetricsSource | None, logger: logging.Logger) -> MetricsServer | None:
    settings = Settings()
    port = settings.own_metrics_port(name)
    if stats is None:
        return None
    if port is None:
        # Metrics off: the histograms are not fed either (the benchmark's baseline).
        for value in vars(stats).values() if hasattr(stats, "__dict__") else ():
            if isinstance(value, Histogram):
                value.enabled = False
        return None
    try:
        server = start_metrics_server(metrics_registry(stats), port, settings.metrics_host)
    except OSError as e:
        # Serving commands matters more than being scraped: run on, loudly.
        logger.error("%s: cannot serve /metrics on %s:%d (%s); running without", name, settings.metrics_host, port, e)
        return None
    logger.info("%s: metrics on %s", name, server.url)
    return server


def _serve_forever(pid_file: Path | None, name: str, make: Callable[[Settings], Any], logger: logging.Logger) -> None:

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        def ready(_service: Service) -> None:
            # Up: what is alive now lives as long as the process (core/_gc.py: what it saves).
            settle_collection()
            mark_ready(pid_file)
            loop_type = type(asyncio.get_running_loop())
            logger.info("%s consuming (event loop %s.%s)", name, loop_type.__module__, loop_type.__qualname__)

        # A Kafka or PostgreSQL outage of any length never ends the process: supervise restarts
        # the service after a capped backoff: every long-running service rides it out.
        p = await supervise(lambda: make(Settings()), stop, logger, on_started=ready)
        logger.info("%s stopping: %s", name, getattr(p, "stats", None))

    run_cli(go())
