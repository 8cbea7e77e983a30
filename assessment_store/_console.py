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

from assessment_store.core import Settings
from assessment_store.core import AssessmentStoreError, StoreUsageError, WaitTimeout
from assessment_store.core import Service, supervise

__all__ = ["err", "fail", "out", "run_cli", "serve_forever"]

T = TypeVar("T")

# Piped output (CI logs, `| less`) gets a wide fixed width instead of Rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() else 160
out = Console(width=_WIDTH)
err = Console(stderr=True, width=_WIDTH)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def run_cli(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; a store error becomes a message and an exit code: 1 refused request,
    2 backend error, 3 wait timeout, 4 retriable backend error."""
    try:
        return asyncio.run(coro)
    except WaitTimeout as e:
        fail(str(e), 3)
    except StoreUsageError as e:
        fail(str(e), 1)
    except AssessmentStoreError as e:
        fail(str(e), 2 if not e.retriable else 4)


def serve_forever(pid_file: Path | None, name: str, make: Callable[[Settings], Any]) -> None:
    """Run a store process until SIGTERM/SIGINT; write '<pid-file>.ready' once it consumes."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logger = logging.getLogger(f"assessment_store.{name}")

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        def ready(_service: Service) -> None:
            if pid_file is not None:
                pid_file.with_suffix(".ready").write_text("ready\n")
            logger.info("%s consuming", name)

        # A Kafka or PostgreSQL outage of any length never ends the process: supervise restarts
        # the service after a capped backoff (issue: every long-running service rides it out).
        p = await supervise(lambda: make(Settings()), stop, logger, on_started=ready)
        logger.info("%s stopping: %s", name, getattr(p, "stats", None))

    run_cli(go())
