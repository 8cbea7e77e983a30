"""The lifecycle every long-lived component shares (as aiokafka's clients do): idempotent
``start``/``stop`` and ``async with`` doing both; and the one backoff every retry loop of the
store uses (services riding out a Kafka or PostgreSQL outage, tests waiting on a condition)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self

from ._errors import BackendError, DatabaseUnavailable, KafkaUnavailable

__all__ = ["AsyncLifecycle", "Backoff", "Service", "outage_name", "supervise"]


class AsyncLifecycle:
    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class Backoff:
    """Capped exponential backoff: ``initial_s``, doubled after each failure up to ``cap_s``.

    ``failed(...)`` logs the outage at WARNING (once per failure, with the next delay) and sleeps;
    ``succeeded()`` logs "recovered" once after a run of failures and resets the delay. A stop
    event, when given, cuts the sleep short so a service stops promptly during an outage.
    """

    def __init__(self, log: logging.Logger | None = None, *, initial_s: float = 0.1, cap_s: float = 5.0) -> None:
        if not 0 < initial_s <= cap_s:
            raise ValueError(f"backoff needs 0 < initial_s <= cap_s, got {initial_s}, {cap_s}")
        self.log = log
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.delay_s = initial_s
        self.failures = 0
        """Consecutive failures since the last success."""

    def next_delay(self) -> float:
        """The delay to wait now; doubles the next one (capped)."""
        delay, self.delay_s = self.delay_s, min(self.delay_s * 2, self.cap_s)
        return delay

    async def failed(self, what: str, error: BaseException | None = None, stop: asyncio.Event | None = None) -> None:
        self.failures += 1
        delay = self.next_delay()
        if self.log is not None:
            self.log.warning("%s, retrying in %.1f s (attempt %d)%s", what, delay, self.failures,
                             f": {error}" if error is not None else "")
        if stop is None:
            await asyncio.sleep(delay)
            return
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass  # the delay passed without a stop request: retry

    def succeeded(self, what: str = "recovered") -> None:
        if self.failures and self.log is not None:
            self.log.warning("%s after %d failed attempt(s)", what, self.failures)
        self.failures = 0
        self.delay_s = self.initial_s


def outage_name(e: BackendError) -> str:
    """"PostgreSQL unavailable" / "Kafka unavailable" / "<backend> unavailable", for log lines."""
    if isinstance(e, DatabaseUnavailable):
        return "PostgreSQL unavailable"
    if isinstance(e, KafkaUnavailable):
        return "Kafka unavailable"
    return f"{type(e).__name__}"


class Service(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def run(self, stop: asyncio.Event | None = None) -> None: ...


async def supervise(
    make: Callable[[], Service], stop: asyncio.Event, log: logging.Logger, *,
    on_started: Callable[[Service], None] | None = None, backoff: Backoff | None = None,
) -> Service | None:
    """Run a long-lived service until ``stop`` is set, riding out dependency outages of any length.

    A ``BackendError`` (Kafka or PostgreSQL unreachable, at start or while running) never ends the
    process: the service is stopped, and after a capped exponential backoff a fresh one is built
    and started, exactly as after a ``kill -9`` and restart, which every service is built to
    survive (offsets and state come back from the log and PostgreSQL). Any other exception is a
    bug and propagates. Returns the last service (for its stats), or None if none ever started.
    """
    backoff = backoff or Backoff(log)
    last: Service | None = None
    started_once = False
    while not stop.is_set():
        service = make()
        try:
            await service.start()
            last = service
            backoff.succeeded("dependencies recovered: service started again")
            if not started_once and on_started is not None:
                on_started(service)
            started_once = True
            await service.run(stop)
        except BackendError as e:
            await _stop_quietly(service, log)
            await backoff.failed(f"{outage_name(e)}", e, stop)
            continue
        except BaseException:
            await _stop_quietly(service, log)
            raise
        await service.stop()
        break
    return last


async def _stop_quietly(service: Service, log: logging.Logger) -> None:
    """Stop a service whose dependency just failed; its own stop may fail the same way, which is
    logged, not raised (the service is being replaced either way)."""
    try:
        await service.stop()
    except Exception as e:  # noqa: BLE001 - logged: a failed stop during an outage changes nothing
        log.warning("stopping %s after an outage failed too: %s", type(service).__name__, e)
