"""``Position``: where a reader of one topic stands, per partition, as a value that can be stored
and parsed back.

A position holds, for each partition, the offset of the *next* record to read (the offset after
the last record handled), so resuming from it reads exactly what came after: nothing twice,
nothing skipped. On the events topic it also holds the processor fence epoch in force at that
offset (``streams/_fence.py``), so a reader resumed in the middle of a partition keeps refusing
what a zombie processor wrote after a later owner's fence, as a reader from offset 0 would.

Text form (``str(position)``, ``Position.parse``)::

    assessments.events:0=15,1=7@3,2=0

topic, then ``partition=next_offset`` per partition, with ``@epoch`` where a fence is in force.
Kafka topic names cannot contain ``:``, ``=``, ``,`` or ``@``, so the form is unambiguous.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from assessment_store.core import ValidationError

__all__ = ["Position"]

_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")
_ENTRY_RE = re.compile(r"(\d{1,9})=(\d{1,19})(?:@(\d{1,19}))?")
_MAX_TEXT = 64_000


@dataclass(frozen=True, slots=True)
class Position:
    """Next offset (and fence epoch) per partition of one topic; immutable, hashable, comparable."""

    topic: str
    offsets: tuple[tuple[int, int], ...]
    """(partition, next offset to read), sorted by partition"""
    epochs: tuple[tuple[int, int], ...] = ()
    """(partition, processor fence epoch in force at that offset), only where above 0"""

    @classmethod
    def of(cls, topic: str, offsets: Mapping[int, int], epochs: Mapping[int, int] | None = None) -> Position:
        """Build one from dicts (partition -> next offset, partition -> fence epoch)."""
        if not _TOPIC_RE.fullmatch(topic):
            raise ValidationError("position", f"{topic!r} is not a Kafka topic name")
        for p, off in offsets.items():
            if p < 0 or off < 0:
                raise ValidationError("position", f"partition {p}: offsets and partitions are never negative")
        kept = {p: e for p, e in (epochs or {}).items() if e > 0 and p in offsets}
        return cls(topic, tuple(sorted(offsets.items())), tuple(sorted(kept.items())))

    def offset_map(self) -> dict[int, int]:
        """partition -> next offset to read"""
        return dict(self.offsets)

    def epoch_map(self) -> dict[int, int]:
        """partition -> fence epoch in force (partitions without one are absent)"""
        return dict(self.epochs)

    def next_offset(self, partition: int) -> int | None:
        return dict(self.offsets).get(partition)

    def __str__(self) -> str:
        epochs = dict(self.epochs)
        parts = [f"{p}={off}" + (f"@{epochs[p]}" if p in epochs else "") for p, off in self.offsets]
        return f"{self.topic}:{','.join(parts)}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """The inverse of ``str(position)``; ``ValidationError`` naming what is wrong."""
        if len(text) > _MAX_TEXT:
            raise ValidationError("position", f"longer than {_MAX_TEXT} characters")
        topic, sep, rest = text.strip().rpartition(":")
        if not sep:
            raise ValidationError("position", f"{text[:80]!r} is not 'topic:partition=offset,...'")
        offsets: dict[int, int] = {}
        epochs: dict[int, int] = {}
        for entry in filter(None, rest.split(",")):
            m = _ENTRY_RE.fullmatch(entry.strip())
            if m is None:
                raise ValidationError("position", f"{entry[:40]!r} is not 'partition=offset' or 'partition=offset@epoch'")
            p = int(m.group(1))
            if p in offsets:
                raise ValidationError("position", f"partition {p} appears twice")
            offsets[p] = int(m.group(2))
            if m.group(3) is not None:
                epochs[p] = int(m.group(3))
        return cls.of(topic, offsets, epochs)
