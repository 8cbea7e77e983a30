"""Metrics: what every process counts, and how Prometheus reads it.

Source of truth: each process's ``*Stats`` object (plain ints, ``Counter``s and the ``Histogram``
below). Nothing is incremented twice: a Prometheus collector reads the Stats object at every
scrape (``metrics_registry``), so the hot paths pay a Python ``+= 1`` (or a bisect for a
histogram), never a ``prometheus_client`` lock or label lookup. Stats classes say what they
export with ``metric_families()``.

Registries: ``metrics_registry(*sources)`` returns a new ``CollectorRegistry`` of its own for
each call; nothing is registered on ``prometheus_client``'s default registry, so any number of
processors, projectors, routers or clients in one Python process (tests run many) never collide.
The ``instance`` label is Prometheus's own (the scrape target); none is added here.

``metrics_registry`` and ``start_metrics_server`` are in ``_exposition``, the only module that imports
``prometheus_client`` (it is in the ``server`` extra), and only when they run: counting works on the
base install, the client's included.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "LATENCY_BUCKETS", "SIZE_BUCKETS", "Histogram", "MetricFamily", "MetricsSource", "counter", "counter_by", "gauge",
    "histogram",
]

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
"""Seconds, dense around the 20 ms p95 command latency budget."""

SIZE_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10_000)
"""Records per batch (the projector's batch is at most ``projector_batch_size``, 2000 by default)."""


class Histogram:
    """A Prometheus histogram kept as plain numbers: ``observe`` is one bisect and three adds.

    ``enabled=False`` makes ``observe`` a no-op (for callers that switch timing off)."""

    __slots__ = ("buckets", "counts", "sum", "count", "enabled")

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS, *, enabled: bool = True) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0
        self.enabled = enabled

    def observe(self, value: float) -> None:
        if not self.enabled:
            return
        # Prometheus buckets are "less than or equal": bisect_left finds the first bound >= value.
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, cumulative count) pairs, ending with ``+Inf``, as the exposition wants them."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
        return out

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, sum={self.sum:.6g})"


@dataclass(frozen=True)
class MetricFamily:
    """One metric as read at a scrape: counters and gauges carry ``samples`` (label values ->
    value), histograms carry ``histograms`` (label values -> Histogram)."""

    name: str
    help: str
    kind: Literal["counter", "gauge", "histogram"]
    labels: tuple[str, ...] = ()
    samples: tuple[tuple[tuple[str, ...], float], ...] = ()
    histograms: tuple[tuple[tuple[str, ...], Histogram], ...] = field(default=())


class MetricsSource(Protocol):
    def metric_families(self) -> Iterable[MetricFamily]: ...


def counter(name: str, help: str, value: float) -> MetricFamily:
    return MetricFamily(name, help, "counter", (), (((), float(value)),))


def gauge(name: str, help: str, value: float) -> MetricFamily:
    return MetricFamily(name, help, "gauge", (), (((), float(value)),))


def counter_by(name: str, help: str, labels: Sequence[str], values: Mapping[Any, int],
               ) -> MetricFamily:
    """A labelled counter from a mapping; keys are one label value or a tuple of them."""
    samples = tuple(((k,) if isinstance(k, str) else tuple(k), float(v)) for k, v in sorted(values.items()))
    return MetricFamily(name, help, "counter", tuple(labels), samples)


def histogram(name: str, help: str, h: Histogram) -> MetricFamily:
    return MetricFamily(name, help, "histogram", histograms=(((), h),))
