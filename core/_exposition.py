"""The Prometheus side of ``_metrics``: a collector turning ``MetricFamily`` objects into
``prometheus_client`` families at scrape time. Imported only when a registry is built."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ._metrics import MetricFamily, MetricsSource

__all__ = ["SourceCollector"]


def _convert(f: MetricFamily) -> Metric:
    labels = list(f.labels)
    if f.kind == "histogram":
        h = HistogramMetricFamily(f.name, f.help, labels=labels)
        for values, hist in f.histograms:
            h.add_metric(list(values), hist.cumulative(), hist.sum)
        return h
    m: CounterMetricFamily | GaugeMetricFamily
    m = CounterMetricFamily(f.name, f.help, labels=labels) if f.kind == "counter" else \
        GaugeMetricFamily(f.name, f.help, labels=labels)
    for values, value in f.samples:
        m.add_metric(list(values), value)
    return m


class SourceCollector:
    """Reads every source at each scrape (so one scrape shows one moment of each source)."""

    def __init__(self, sources: Sequence[MetricsSource]) -> None:
        self._sources = tuple(sources)

    def collect(self) -> Iterable[Metric]:
        return [_convert(f) for s in self._sources for f in s.metric_families()]
