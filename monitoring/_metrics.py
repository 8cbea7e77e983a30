"""Prometheus exposition of the monitor's latest snapshot: a custom collector, so a scrape reads
the figures of one observation (never half of one poll and half of the next) and costs no broker
round trip.

Names and labels (kafka_exporter's where it has one, so its dashboards work unchanged):

* ``kafka_consumergroup_current_offset{consumergroup,topic,partition}``: committed offset
  (partitions without a commit are left out, as kafka_exporter does);
* ``kafka_consumergroup_lag{consumergroup,topic,partition}``: lag in offsets;
* ``kafka_topic_partition_current_offset{topic,partition}``: end offset (high watermark);
* ``kafka_topic_partition_oldest_offset{topic,partition}``: log start offset;
* ``assessment_store_consumergroup_lag_seconds{consumergroup,topic,partition}``: age of the oldest
  unconsumed record (left out when unknown);
* ``assessment_store_consumergroup_status{consumergroup,status}``: one-hot, 1 for the group's
  status and 0 for the five others (alert on ``{status=~"ERR|STALL|STOP"} == 1``);
* ``assessment_store_consumergroup_status_code{consumergroup}``: the same as a number, the rank
  in OK=0, REWIND=1, WARN=2, ERR=3, STALL=4, STOP=5 (for "worst over time" graphs);
* ``assessment_store_consumergroup_source{consumergroup,source}``: 1, where the offsets come from;
* ``assessment_store_lag_monitor_up``: 1 when the latest poll reached the broker, else 0 (the
  other figures are then the last known ones, ``..._last_observation_timestamp_seconds`` old);
* ``assessment_store_lag_monitor_last_observation_timestamp_seconds``: when they were read;
* ``assessment_store_lag_monitor_clock_skewed_partitions``: partitions whose oldest unconsumed
  record is timestamped in the future.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from ._model import LagSnapshot
from ._status import Status

__all__ = ["LagCollector", "lag_registry"]

_GROUP_PARTITION = ["consumergroup", "topic", "partition"]


class LagCollector:
    """Collects from ``snapshot()`` (the monitor's ``latest``) at every scrape."""

    def __init__(self, snapshot: Callable[[], LagSnapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        # Registration asks for the names; without describe() it would collect (read the snapshot).
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._snapshot()))

    def _families(self, snap: LagSnapshot | None) -> Iterable[Metric]:
        offset = GaugeMetricFamily("kafka_consumergroup_current_offset", "Committed offset of a consumer group",
                                   labels=_GROUP_PARTITION)
        lag = GaugeMetricFamily("kafka_consumergroup_lag", "Lag of a consumer group in offsets",
                                labels=_GROUP_PARTITION)
        end = GaugeMetricFamily("kafka_topic_partition_current_offset", "End offset (high watermark) of a partition",
                                labels=["topic", "partition"])
        oldest = GaugeMetricFamily("kafka_topic_partition_oldest_offset", "Log start offset of a partition",
                                   labels=["topic", "partition"])
        seconds = GaugeMetricFamily("assessment_store_consumergroup_lag_seconds",
                                    "Age of the oldest record a consumer group has yet to consume",
                                    labels=_GROUP_PARTITION)
        status = GaugeMetricFamily("assessment_store_consumergroup_status",
                                   "1 for the consumer group's status, 0 for the others",
                                   labels=["consumergroup", "status"])
        code = GaugeMetricFamily("assessment_store_consumergroup_status_code",
                                 "Status rank: OK=0 REWIND=1 WARN=2 ERR=3 STALL=4 STOP=5", labels=["consumergroup"])
        source = GaugeMetricFamily("assessment_store_consumergroup_source",
                                   "Where the group's committed offsets are read (kafka or postgres)",
                                   labels=["consumergroup", "source"])
        up = GaugeMetricFamily("assessment_store_lag_monitor_up", "1 when the latest poll reached the broker")
        observed = GaugeMetricFamily("assessment_store_lag_monitor_last_observation_timestamp_seconds",
                                     "When the figures served were read")
        skewed = GaugeMetricFamily("assessment_store_lag_monitor_clock_skewed_partitions",
                                   "Partitions whose oldest unconsumed record is timestamped in the future")
        if snap is not None:
            for g in snap.groups:
                for p in g.partitions:
                    labels = [g.group, p.topic, str(p.partition)]
                    if p.committed is not None:
                        offset.add_metric(labels, p.committed)
                    lag.add_metric(labels, p.lag)
                    if p.lag_seconds is not None:
                        seconds.add_metric(labels, p.lag_seconds)
                for s in Status:
                    status.add_metric([g.group, s.value], 1.0 if s is g.status else 0.0)
                code.add_metric([g.group], g.status.code)
                source.add_metric([g.group, g.source], 1.0)
            for t in snap.topics:
                end.add_metric([t.topic, str(t.partition)], t.end)
                oldest.add_metric([t.topic, str(t.partition)], t.log_start)
            up.add_metric([], 1.0 if snap.reachable else 0.0)
            if snap.observed_at is not None:
                observed.add_metric([], snap.observed_at)
            skewed.add_metric([], snap.clock_skewed)
        return [offset, lag, end, oldest, seconds, status, code, source, up, observed, skewed]


def lag_registry(snapshot: Callable[[], LagSnapshot]) -> CollectorRegistry:
    """A registry of its own holding only the lag collector (no process metrics of whoever embeds it)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(LagCollector(snapshot))
    return registry
