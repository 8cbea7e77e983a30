"""The status of a consumer group's partition, from a sliding window of observations: a pure
function (no clock, no I/O), in the spirit of Burrow's evaluator.

An observation is what one poll saw of one (group, topic, partition): when (``at``), the committed
offset (None: the group never committed there), the lag in offsets and in seconds, since when
the committed offset has had its current value (``committed_since``), and whether a live member
of the group owns the partition (``owned``). The window ``W`` is the last ``lag_window`` of them,
oldest first; ``last`` is the newest. "Now" is ``last.at``: the evaluator never reads a clock.

The rules, applied in this order; the first that holds decides:

1. **REWIND**: in some step of ``W`` the committed offset went back (both known, newer < older).
   A reset or a replay: said first, since it explains whatever the lag does around it.
2. **STALL** / **STOP**: at least two observations, the committed offset is the same in every
   observation of ``W`` (or None in all), the lag is above 0 in every one, and the offset has not
   moved for at least ``stopped_after_s`` (``last.at - last.committed_since``; when that is
   unknown, ``last.at - W[0].at``). Then **STALL** if a live member owns the partition (the
   consumer is there, but does not progress) or its commit time moved within ``W`` (it commits
   the same offset again), else **STOP** (nobody consumes the partition: it is not committing).
3. **OK**: some observation of ``W`` has lag 0: the group caught up within the window, so a
   backlog now is one it has recently been able to clear (Burrow's first rule).
4. **ERR**: ``last.lag_seconds`` exceeds ``err_lag_seconds`` and the lag is not shrinking across
   ``W`` (``last.lag >= W[0].lag``; trivially true of a single observation, so a one-shot reading
   of a partition far behind is ERR at once).
5. **WARN**: the lag is growing: at least two observations, it never decreases from one to the
   next, and ``last.lag > W[0].lag``.
6. **OK** otherwise (a backlog that shrinks, or holds steady while the offsets move).

A group's status is its worst partition's, in the order of ``Status`` (OK < REWIND < WARN < ERR <
STALL < STOP); a group without partitions is OK. ``Status.code`` is that rank.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Observation", "Status", "Thresholds", "Verdict", "evaluate", "worst"]


class Status(enum.Enum):
    """A partition's or a group's status, declared from best to worst."""

    OK = "OK"
    REWIND = "REWIND"
    WARN = "WARN"
    ERR = "ERR"
    STALL = "STALL"
    STOP = "STOP"

    @property
    def code(self) -> int:
        """Severity rank: 0 (OK) to 5 (STOP)."""
        return _ORDER.index(self)


_ORDER: tuple[Status, ...] = tuple(Status)


@dataclass(frozen=True)
class Observation:
    """One poll's view of one (group, topic, partition)."""

    at: float
    """When it was observed (epoch seconds)."""
    committed: int | None
    """The committed offset: the next offset the group will consume; None when it never committed."""
    lag: int
    """Offsets the group has yet to consume (>= 0)."""
    lag_seconds: float | None = None
    """Age of the oldest unconsumed record; None when unknown this round."""
    committed_since: float | None = None
    """Since when the committed offset has had its current value (a commit time where the source
    records one, else the first observation of that value); None when unknown."""
    owned: bool = False
    """A live member of the group is assigned the partition."""


@dataclass(frozen=True)
class Thresholds:
    err_lag_seconds: float = 300.0
    stopped_after_s: float = 60.0


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str


def evaluate(observations: Iterable[Observation], thresholds: Thresholds) -> Verdict:
    """The status of one partition from its window (oldest first); the rules are the module's."""
    window: Sequence[Observation] = list(observations)
    if not window:
        return Verdict(Status.OK, "no observation yet")
    first, last = window[0], window[-1]
    for older, newer in zip(window, window[1:]):
        if older.committed is not None and newer.committed is not None and newer.committed < older.committed:
            return Verdict(Status.REWIND, f"committed offset went back from {older.committed} to {newer.committed}")
    stuck = len({o.committed for o in window}) == 1 and all(o.lag > 0 for o in window)
    if len(window) >= 2 and stuck:
        since = last.committed_since if last.committed_since is not None else first.at
        unmoved = last.at - since
        if unmoved >= thresholds.stopped_after_s:
            recommitted = (first.committed_since is not None and last.committed_since is not None
                           and last.committed_since > first.committed_since)
            if last.owned or recommitted:
                return Verdict(Status.STALL, f"offset {last.committed} unmoved for {unmoved:.0f} s with lag "
                               f"{last.lag}, though a live member owns the partition")
            return Verdict(Status.STOP, f"offset {last.committed} unmoved for {unmoved:.0f} s with lag {last.lag}, "
                           "and no member owns the partition")
    if any(o.lag == 0 for o in window):
        return Verdict(Status.OK, "caught up within the window")
    if (last.lag_seconds is not None and last.lag_seconds > thresholds.err_lag_seconds
            and last.lag >= first.lag):
        return Verdict(Status.ERR, f"oldest unconsumed record is {last.lag_seconds:.0f} s old "
                       f"(> {thresholds.err_lag_seconds:g} s) and the lag is not shrinking")
    steps = list(zip(window, window[1:]))
    if steps and all(b.lag >= a.lag for a, b in steps) and last.lag > first.lag:
        return Verdict(Status.WARN, f"lag growing across the window: {first.lag} -> {last.lag}")
    return Verdict(Status.OK, "lag not growing")


def worst(statuses: Iterable[Status]) -> Status:
    """The worst of ``statuses`` (OK when there are none): a group's status from its partitions'."""
    return max(statuses, key=lambda s: s.code, default=Status.OK)
