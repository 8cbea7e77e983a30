"""What one observation of the cluster holds: per group, per partition, the offsets, the lag and
its status; frozen, so a snapshot handed to a renderer or a scrape never changes under it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ._status import Status

__all__ = ["GroupLag", "LagSnapshot", "PartitionLag", "Source", "TopicPartitionOffsets"]

Source = Literal["kafka", "postgres"]
"""Where a group's committed offsets were read: the group coordinator, or the projector's own
offsets table in PostgreSQL (the offsets it resumes from)."""


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    """Next offset the group will consume; None: the group never committed here."""
    log_start: int
    """The partition's first offset still in the log."""
    end: int
    """High watermark: the offset the next record will get."""
    lag: int
    """``end - committed`` (``end - log_start`` without a commit), never below 0."""
    lag_seconds: float | None
    """``observed_at - timestamp`` of the oldest unconsumed record, 0 when caught up, clamped at 0;
    None when that record could not be read within the fetch timeout."""
    oldest_unconsumed_ts: float | None
    """Timestamp (epoch seconds) of that record; None when caught up or unknown."""
    clock_skew: bool
    """That record's timestamp lies in the future (more than a second): lag_seconds was clamped to 0."""
    owned: bool
    """A live member of the group is assigned the partition."""
    committed_since: float | None
    """Since when the committed offset has this value (see ``Observation.committed_since``)."""
    consumption_rate: float | None
    """Committed offsets per second since the previous observation; None on the first."""
    status: Status
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic, "partition": self.partition, "committed": self.committed,
            "logStart": self.log_start, "end": self.end, "lag": self.lag, "lagSeconds": self.lag_seconds,
            "oldestUnconsumedTimestamp": self.oldest_unconsumed_ts, "clockSkew": self.clock_skew,
            "owned": self.owned, "committedSince": self.committed_since, "consumptionRate": self.consumption_rate,
            "status": self.status.value, "reason": self.reason,
        }


@dataclass(frozen=True)
class GroupLag:
    group: str
    source: Source
    state: str
    """The coordinator's group state (Stable, Empty, PreparingRebalance, ...; "Unknown" when not described)."""
    members: int
    partitions: tuple[PartitionLag, ...]
    status: Status

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def lag_seconds(self) -> float | None:
        """The oldest unconsumed record's age over the group's partitions (None: none known)."""
        known = [p.lag_seconds for p in self.partitions if p.lag_seconds is not None]
        return max(known) if known else None

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group, "source": self.source, "state": self.state, "members": self.members,
            "status": self.status.value, "lag": self.lag, "lagSeconds": self.lag_seconds,
            "partitions": [p.to_json() for p in self.partitions],
        }


@dataclass(frozen=True)
class TopicPartitionOffsets:
    topic: str
    partition: int
    log_start: int
    end: int


@dataclass(frozen=True)
class LagSnapshot:
    """The latest observation. When the broker stops answering, the monitor keeps serving the last
    figures with ``stale`` set and ``reachable`` False; ``observed_at`` stays the time they were read."""

    observed_at: float | None
    """When these figures were read (epoch seconds); None: never."""
    groups: tuple[GroupLag, ...]
    topics: tuple[TopicPartitionOffsets, ...]
    reachable: bool
    stale: bool
    errors: tuple[str, ...] = ()
    """What failed in the latest poll (the broker, or PostgreSQL for the projector's offsets)."""
    clock_skewed: int = 0
    """Partitions whose oldest unconsumed record carries a timestamp in the future."""

    def group(self, name: str) -> GroupLag | None:
        return next((g for g in self.groups if g.group == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "observedAt": self.observed_at, "reachable": self.reachable, "stale": self.stale,
            "errors": list(self.errors), "clockSkewed": self.clock_skewed,
            "groups": [g.to_json() for g in self.groups],
        }
