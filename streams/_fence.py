"""The epoch fence: how a zombie command processor's late writes are kept out of the log of record.

Every owner of command partition *p* gets an *epoch*, strictly higher than any earlier owner's
(``streams/_processor.py`` says how it is reserved), and before its first event it appends a
*fence record* carrying that epoch to partition *p* of the events topic and of the outcomes topic.
Every event and outcome record it writes carries the epoch in the ``writer-epoch`` header.

The rule every reader of those topics applies, per partition, in log order (``LogFence``):

* a fence record raises the partition's fence to its epoch (a fence below the current one is a
  zombie's late fence: it changes nothing and is reported as fenced);
* a record whose ``writer-epoch`` is below the partition's fence was written by a processor that
  had already lost the partition: it is *fenced*, never folded, counted and kept as an anomaly;
* everything else is accepted, including records without the header (written before fencing
  existed, or by tools that write the log directly): the fence covers the processor's writes.

A reader that starts in the middle of a partition must start from the fence in force at its
start offset: the projector stores it with its offsets, the reverse sync in its committed offsets'
metadata (``fence_metadata``), and readers from offset 0 simply see every fence.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence

from aiokafka import TopicPartition

__all__ = [
    "EPOCH_HEADER", "FENCE_HEADER", "FENCE_TYPE", "LogFence", "Verdict", "fence_headers", "fence_metadata",
    "header", "header_int", "metadata_epoch",
]

FENCE_HEADER = "fence-epoch"
"""On a fence record: the epoch of the processor that owns the partition from this offset on."""
EPOCH_HEADER = "writer-epoch"
"""On every event and outcome record the processor writes: its epoch for that partition."""
FENCE_TYPE = b"ProcessorFence"
"""The ``type`` header of a fence record, so kcat users can filter fences out like any event type."""

_METADATA_RE = re.compile(r"fence-epoch=(\d+)")

Headers = Sequence[tuple[str, bytes]]


class Verdict(enum.Enum):
    FENCE = "fence"
    """a fence record (no payload to fold)"""
    ACCEPTED = "accepted"
    FENCED = "fenced"
    """written by a processor that had lost the partition (or a stale fence): never folded"""


def header(headers: Headers, name: str) -> bytes | None:
    """The value of a record's first header called ``name``, if it has one."""
    # A plain loop, not next() over a generator: this runs a few times for every record folded
    # or decided, and the generator's frame cost as much as the search.
    for k, v in headers:
        if k == name:
            return v
    return None


def header_int(headers: Headers, name: str) -> int | None:
    return _int(header(headers, name))


def _int(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None  # not ours: a record we do not understand is left to the decoder to report


def fence_headers(epoch: int, owner: str) -> list[tuple[str, bytes]]:
    return [(FENCE_HEADER, str(epoch).encode()), ("type", FENCE_TYPE), ("fence-owner", owner.encode()[:200])]


def fence_metadata(epoch: int) -> str:
    """Offset-commit metadata recording a fence epoch (the processor's reservation, the reverse
    sync's position in the fence history)."""
    return f"fence-epoch={epoch}"


def metadata_epoch(metadata: str | None) -> int:
    m = _METADATA_RE.search(metadata or "")
    return int(m.group(1)) if m else 0


class LogFence:
    """The fence in force per partition, advanced record by record in log order."""

    def __init__(self, start: dict[TopicPartition, int] | None = None) -> None:
        self.epochs: dict[TopicPartition, int] = dict(start or {})
        self.fenced = 0
        """records judged ``FENCED`` so far"""

    def current(self, tp: TopicPartition) -> int:
        return self.epochs.get(tp, 0)

    def judge(self, tp: TopicPartition, headers: Headers) -> tuple[Verdict, int | None]:
        """The verdict on the next record of ``tp`` and the epoch it carries (a fence's own, or
        its writer's; None for a record written without one). Advances the fence on a fence record."""
        # One pass over the headers for both (the first of each name counts, as in header_int):
        # this runs for every record the projector folds.
        raw_fence = raw_epoch = None
        for k, v in headers:
            if k == FENCE_HEADER:
                if raw_fence is None:
                    raw_fence = v
            elif k == EPOCH_HEADER and raw_epoch is None:
                raw_epoch = v
        fence = _int(raw_fence)
        current = self.epochs.get(tp, 0)
        if fence is not None:
            if fence < current:
                self.fenced += 1
                return Verdict.FENCED, fence
            self.epochs[tp] = fence
            return Verdict.FENCE, fence
        epoch = _int(raw_epoch)
        if epoch is not None and epoch < current:
            self.fenced += 1
            return Verdict.FENCED, epoch
        return Verdict.ACCEPTED, epoch
