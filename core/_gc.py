"""The cyclic garbage collector's settings for the store's own processes.

A fold allocates a few dozen container objects per record (the decoded event, its payload, the new
state, the history row, the aiokafka record, asyncpg's COPY tuples), and a batch keeps thousands of
them alive at once. With CPython's defaults (a young collection every 700 net allocations) most of
those are alive at a young collection, so they are walked, promoted, walked again in the middle
generation and promoted into the oldest, whose growth then triggers full collections that walk every
object of the process, imports included. None of it frees anything: the fold's objects hold no
cycles and die by reference counting.

``bulk_collection`` fixes both costs for the duration of the work: the objects alive at its start
(modules, settings, connections, codecs) are frozen out of the collector's sight (``gc.freeze``),
and a young collection happens every ``young`` allocations instead of 700, by which time a batch's
objects are mostly gone. Measured on a 1,000,000-event rebuild (``bench.projection``): the folding
processes' CPU fell from 54.1 to 37.1 µs per event, the rebuild from 46.8 to 34.6 s; the threshold
alone gave 41.2 µs, the collector off altogether 38.8 (no better than this, and it would keep any
cyclic garbage until the end).

A long-running service (processor, projector, bridge) pays the same on a smaller scale at every
command, so ``settle_collection`` applies the same two settings for good once the service is up
(cli/_console.py). Measured with ``bench.commands`` (60,000 pre-loaded commands drained): processor
CPU 0.087 -> 0.073 ms per command, projector 0.055 -> 0.044, sustained 7,964 -> 9,270 commands/s.

A young collection of 50,000 objects walks only those still alive (the dead ones left the list when
reference counting freed them), so the pause it makes is short: a batch's worth of objects at most.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["bulk_collection", "settle_collection"]

_YOUNG = 50_000
"""Net allocations between two young collections (CPython's default: 700)."""
_MIDDLE, _OLD = 20, 100
"""Young collections per middle one, middle ones per full one (defaults: 10, 10): the full
collections, which walk every object not frozen, become rarer still."""


def settle_collection(young: int = _YOUNG) -> None:
    """For the rest of the process: freeze what is alive now (a started service's modules,
    connections, caches), and collect the young generation every ``young`` allocations."""
    gc.collect()  # first: cyclic garbage pending now would otherwise be frozen, kept for good
    gc.freeze()
    gc.set_threshold(young, _MIDDLE, _OLD)


@contextmanager
def bulk_collection(young: int = _YOUNG) -> Iterator[None]:
    """Run the block with the collector set for bulk folding (module docstring); restore it after.

    The freeze is undone on exit only if nothing was frozen before (then this block froze everything
    and ``gc.unfreeze`` restores the previous state exactly); a process that froze objects of its own
    (the command processor, after loading its partitions) keeps them frozen, with what this block
    added, which was alive before the block anyway.
    """
    thresholds = gc.get_threshold()
    froze_all = gc.get_freeze_count() == 0
    settle_collection(young)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if froze_all:
            gc.unfreeze()
