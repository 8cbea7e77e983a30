"""The event loop a store process runs on: uvloop when it is installed, else asyncio's own.

Every hop of the command path is an event-loop turn in some process: a socket read, a callback,
a write. uvloop (libuv underneath, the loop asyncpg was written for) does those turns in C: at
100 commands/s it took 10 % off the processor's CPU per command and 15 % off the projector's, and
about a tenth off a drained command's (``python -m bench.commands --set event_loop=asyncio``
against the default; docs/architecture.md, "The event loop", has the figures). Nothing in the store depends on which loop runs:
both implement the same asyncio API, and the test suite runs on the one the settings choose.

The choice is ``Settings.event_loop`` (``ASSESSMENT_STORE_EVENT_LOOP``):

* ``auto`` (the default): uvloop when it can be imported (it ships with the ``server`` extra) and
  the Kafka connections are not TLS, else asyncio's loop. With TLS, aiokafka on uvloop stalls: on
  the authenticated local stack (SASL_SSL) a processor's rebuild of an empty partition waited 30 s
  for a fetch answer that asyncio's loop delivers at once (``tests/test_kafka_security.py``'s round
  trip timed out on it), so ``auto`` keeps TLS on asyncio's loop;
* ``asyncio``: always asyncio's loop;
* ``uvloop``: uvloop whatever the connections (TLS included, at that risk), or ``ImportError``
  saying how to install it.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["EventLoopChoice", "loop_factory", "run"]

T = TypeVar("T")

EventLoopChoice = Literal["auto", "asyncio", "uvloop"]


def loop_factory(choice: EventLoopChoice, *, kafka_tls: bool = False) -> Callable[[], asyncio.AbstractEventLoop]:
    """The factory of the loop ``choice`` names (see the module docstring); ``kafka_tls``: whether
    the process's Kafka connections use TLS (``Settings.kafka_tls``)."""
    if choice == "asyncio":
        return asyncio.new_event_loop
    if choice == "auto" and (kafka_tls or importlib.util.find_spec("uvloop") is None):
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError as e:
        raise ImportError(
            "ASSESSMENT_STORE_EVENT_LOOP=uvloop but uvloop is not installed: pip install 'assessment-store[server]' "
            "(or set it to auto or asyncio)") from e
    return uvloop.new_event_loop


def run(coro: Coroutine[Any, Any, T], choice: EventLoopChoice = "auto", *, kafka_tls: bool = False) -> T:
    """``asyncio.run(coro)`` on the loop ``choice`` names (``loop_factory``)."""
    with asyncio.Runner(loop_factory=loop_factory(choice, kafka_tls=kafka_tls)) as runner:
        return runner.run(coro)
