"""A bench's own services: a freshly purged private stack with only the services it needs."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from assessment_store import Settings
from assessment_store.stack import Stack


def _quiet(_message: str) -> None:
    pass


@contextmanager
def private_services(settings: Settings, services: Sequence[str], log: Callable[[str], None] = _quiet) -> Iterator[Stack]:
    """Purge the stack of ``settings`` (a bench's private data directory), start ``services`` alone
    (``log`` hears their start), and stop them afterwards, also when starting failed half-way."""
    stack = Stack(settings)
    stack.purge(log=_quiet)
    try:
        stack.up(list(services), log=log)
        yield stack
    finally:
        stack.down(log=_quiet)
