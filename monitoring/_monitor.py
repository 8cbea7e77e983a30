"""``LagMonitor``: observes every consumer group every ``lag_poll_interval_s``, keeps the latest
snapshot and a sliding window of observations per partition, and evaluates each partition's
status over its window (``_status``).

Definitions (docs/monitoring.md has the same):

* ``lag = max(0, end - committed)``, ``end`` the high watermark. Without a commit the group is
  taken to start at the log start (as ``auto.offset.reset=earliest``, and as the projector does
  where it stored no offset): ``lag = end - log_start``. A committed offset below the log start
  (records deleted) still counts ``end - committed``, as kafka_exporter and Burrow count it.
* ``lag_seconds = observed_at - timestamp`` of the oldest unconsumed record: the first record at
  or after the committed offset (after it, when compaction removed the one at it); 0 when the
  group is caught up (``lag == 0``); clamped at 0 when that timestamp lies in the future, the
  partition then flagged ``clock_skew`` (and counted) if it is more than a second ahead; None
  when the record could not be read within ``lag_fetch_timeout_s``.
* ``consumption_rate = (committed - previous committed) / (observed_at - previous observed_at)``.
* The projector's group (``projector_group``) is read from PostgreSQL's ``projector_offsets``,
  the offsets it resumes from (source "postgres"); its Kafka offsets are only a mirror written up
  to a second later. Should PostgreSQL not answer, the mirror is shown instead (source "kafka"),
  and the snapshot names the error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fnmatch
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from aiokafka import TopicPartition

from assessment_store.core import (
    AsyncLifecycle,
    BackendError,
    DatabaseUnavailable,
    KafkaUnavailable,
    Settings,
)
from assessment_store.projections import connect, projector_offsets

from ._kafka import ClusterRead, Override, read_cluster
from ._model import GroupLag, LagSnapshot, PartitionLag, TopicPartitionOffsets
from ._status import Observation, Thresholds, evaluate, worst

__all__ = ["LagMonitor", "observe_once"]

log = logging.getLogger("assessment_store.monitoring")

SKEW_TOLERANCE_S = 1.0
"""A record timestamp this far ahead of the monitor's clock is flagged as clock skew (less is the
ordinary jitter between a producer's clock, or the broker's, and ours)."""

_Key = tuple[str, str, int]  # (group, topic, partition)


@dataclass(frozen=True)
class _Projector:
    committed: dict[TopicPartition, int]
    since: dict[TopicPartition, float]


class LagMonitor(AsyncLifecycle):
    """Polls the cluster in the background (``start``/``stop``, idempotent; ``async with``), or on
    demand (``poll``). ``latest`` is the newest snapshot: after a failed poll, the last good figures
    marked ``stale`` and ``reachable=False``."""

    def __init__(
        self, settings: Settings, *, group_glob: str = "*", topic: str | None = None,
        interval_s: float | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.group_glob = group_glob
        self.topic = topic
        self.interval_s = interval_s if interval_s is not None else settings.lag_poll_interval_s
        self.thresholds = Thresholds(settings.lag_err_seconds, settings.lag_stopped_after_s)
        self._clock = clock
        self._windows: dict[_Key, collections.deque[Observation]] = {}
        self._records: dict[tuple[TopicPartition, int], tuple[int, float]] = {}
        self._latest = LagSnapshot(None, (), (), reachable=False, stale=True, errors=("not observed yet",))
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.polls = 0
        """Polls attempted, failed ones included (a test waits on it)."""
        self.updated = asyncio.Condition()

    @property
    def latest(self) -> LagSnapshot:
        return self._latest

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="lag-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            started = loop.time()
            try:
                # Bounded: a broker that accepts connections but never answers must not freeze
                # the figures without marking them stale.
                await asyncio.wait_for(self.poll(), timeout=max(30.0, 3 * self.interval_s))
            except (BackendError, TimeoutError) as e:
                log.warning("lag monitor: %s; serving the last figures as stale", e or "poll timed out")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, self.interval_s - (loop.time() - started)))

    async def poll(self) -> LagSnapshot:
        """Observe once, fold the observation into the windows, and return the new snapshot. A
        failure (Kafka unreachable or refusing) is raised after marking ``latest`` stale."""
        self.polls += 1
        try:
            snapshot = await self._observe()
        except (BackendError, TimeoutError) as e:
            reason = str(e) or "poll timed out"
            self._latest = replace(self._latest, reachable=False, stale=True, errors=(reason,))
            await self._notify()
            if isinstance(e, TimeoutError):
                raise KafkaUnavailable(f"reading consumer-group lag: {reason}") from e
            raise
        self._latest = snapshot
        await self._notify()
        return snapshot

    async def _notify(self) -> None:
        async with self.updated:
            self.updated.notify_all()

    async def _read_projector(self) -> _Projector:
        conn = await connect(self.settings, timeout_s=3.0)
        try:
            rows = await projector_offsets(conn, self.settings.projector_group)
        finally:
            await conn.close()
        return _Projector({TopicPartition(r.topic, r.partition): r.next_offset for r in rows},
                          {TopicPartition(r.topic, r.partition): r.updated_at.timestamp() for r in rows})

    async def _observe(self) -> LagSnapshot:
        s = self.settings
        errors: list[str] = []
        projector: _Projector | None = None
        overrides: dict[str, Override] = {}
        if fnmatch.fnmatchcase(s.projector_group, self.group_glob):
            try:
                projector = await self._read_projector()
                overrides[s.projector_group] = Override(projector.committed, (s.events_topic, s.outcomes_topic))
            except DatabaseUnavailable as e:
                errors.append(f"projector offsets from PostgreSQL: {e}; showing its Kafka mirror")
        read = await read_cluster(s, group_glob=self.group_glob, topic=self.topic, overrides=overrides,
                                  known_records=self._records)
        now = self._clock()
        return self._fold(read, now, projector, tuple(errors))

    def _fold(self, read: ClusterRead, now: float, projector: _Projector | None, errors: tuple[str, ...]) -> LagSnapshot:
        # Records at a committed offset never change, so what earlier polls read is reused; only the
        # entries still wanted survive (a deleted and re-created topic starts its offsets anew).
        records = {**self._records, **read.first_records}
        used: dict[tuple[TopicPartition, int], tuple[int, float]] = {}
        windows: dict[_Key, collections.deque[Observation]] = {}
        groups: list[GroupLag] = []
        skewed = 0
        for g in read.groups:
            partitions: list[PartitionLag] = []
            for tp, committed in g.committed.items():
                start, end = read.starts[tp], read.ends[tp]
                position = start if committed is None else committed
                lag = max(0, end - position)
                ts: float | None = None
                seconds: float | None = 0.0 if lag == 0 else None
                skew = False
                if lag > 0 and (tp, position) in records:
                    used[(tp, position)] = records[(tp, position)]
                    ts = records[(tp, position)][1]
                    seconds = max(0.0, now - ts)
                    skew = ts - now > SKEW_TOLERANCE_S
                    skewed += skew
                key = (g.group, tp.topic, tp.partition)
                window = self._windows.get(key) or collections.deque(maxlen=self.settings.lag_window)
                prev = window[-1] if window else None
                if g.overridden and projector is not None and tp in projector.since:
                    since: float | None = projector.since[tp]  # the projector's own commit time
                elif prev is not None and prev.committed == committed:
                    since = prev.committed_since
                else:
                    since = now  # first seen at this value: a lower bound of how long it has not moved
                rate = None
                if prev is not None and prev.committed is not None and committed is not None and now > prev.at:
                    rate = (committed - prev.committed) / (now - prev.at)
                window.append(Observation(now, committed, lag, seconds, since, tp in g.owned))
                windows[key] = window
                verdict = evaluate(window, self.thresholds)
                partitions.append(PartitionLag(
                    tp.topic, tp.partition, committed, start, end, lag, seconds, ts, skew, tp in g.owned, since,
                    rate, verdict.status, verdict.reason))
            groups.append(GroupLag(g.group, "postgres" if g.overridden else "kafka", g.state, g.members,
                                   tuple(partitions), worst(p.status for p in partitions)))
        # Windows of partitions not seen this time (a deleted group or topic) go with them.
        self._windows = windows
        self._records = used
        topics = tuple(TopicPartitionOffsets(tp.topic, tp.partition, read.starts[tp], read.ends[tp])
                       for tp in sorted(read.ends))
        return LagSnapshot(now, tuple(groups), topics, reachable=True, stale=False, errors=errors,
                           clock_skewed=skewed)


async def observe_once(settings: Settings, *, group_glob: str = "*", topic: str | None = None) -> LagSnapshot:
    """One observation (the window of one): what ``assessment-store lag`` prints."""
    return await LagMonitor(settings, group_glob=group_glob, topic=topic).poll()
