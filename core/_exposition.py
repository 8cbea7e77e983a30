"""The Prometheus side of ``_metrics``: registries that read ``MetricsSource`` objects at scrape time,
and the ``/metrics`` server. ``prometheus_client`` (the ``server`` extra) is imported only when a
registry is built or a server started, so the base install (the client alone) never needs it."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ._metrics import MetricFamily, MetricsSource

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = ["MetricsServer", "SourceCollector", "metrics_registry", "start_metrics_server"]


def _convert(f: MetricFamily) -> Metric:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

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


def metrics_registry(*sources: MetricsSource) -> CollectorRegistry:
    """A new registry (never the default one) that reads ``sources`` at every scrape."""
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SourceCollector(sources))
    return registry


class MetricsServer:
    """A running ``/metrics`` endpoint (``prometheus_client``'s threaded HTTP server)."""

    def __init__(self, server: object, thread: threading.Thread, host: str, port: int) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        shutdown = getattr(self._server, "shutdown", None)
        if shutdown is not None:
            shutdown()
        close = getattr(self._server, "server_close", None)
        if close is not None:
            close()
        self._thread.join(timeout=5)


def start_metrics_server(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``registry`` on ``http://host:port/metrics`` from a daemon thread (port 0: any free one)."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread, host, int(server.server_address[1]))
