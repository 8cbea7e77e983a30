"""A pluggable source of the dashboard's latency and router panels: Prometheus text scraped from
the processes' ``/metrics`` (``ASSESSMENT_STORE_DASHBOARD_SCRAPE_URLS``), folded into figures
over the interval between two scrapes.

Names read (each process documents and serves its own; docs/monitoring.md lists them):

* ``assessment_store_client_command_visible_seconds`` (histogram): a command's send until its event is
  visible in the projection; p50/p95/p99 over the interval, from the buckets' increase, summed over
  every target and label set, interpolated inside a bucket as Prometheus' ``histogram_quantile``;
* ``assessment_store_router_calls_total{backend,outcome}`` (counter): calls/s per backend, and the
  share whose ``outcome`` is not ``ok`` (error rate);
* ``assessment_store_router_call_seconds{backend}`` (histogram): p95 per backend.

A target that does not answer, or serves none of these names, is reported as such; a figure with
no observation in the interval is None ("no data"), never a failure of the dashboard.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["COMMAND_LATENCY", "ROUTER_CALLS", "ROUTER_SECONDS", "PromReading", "PromSource", "histogram_quantile",
           "parse_scrape_urls"]

COMMAND_LATENCY = "assessment_store_client_command_visible_seconds"
ROUTER_CALLS = "assessment_store_router_calls_total"
ROUTER_SECONDS = "assessment_store_router_call_seconds"
# A refusal (invalid transition, not found) is an answer, not a failure of the backend: not an error.
_OK_OUTCOMES = frozenset({"ok", "success", "refused"})
_MAX_BODY = 8 * 1024 * 1024
"""A /metrics page larger than this is refused (a scrape target is trusted, but not unboundedly)."""

Buckets = dict[float, float]
"""upper bound (le) -> cumulative count."""


def parse_scrape_urls(raw: str) -> tuple[str, ...]:
    return tuple(u.strip() for u in raw.split(",") if u.strip())


@dataclass
class _Scrape:
    """Cumulative figures of one scrape of every target, summed (filled in by ``_fold``)."""

    command: Buckets = field(default_factory=dict)
    router_calls: dict[tuple[str, bool], float] = field(default_factory=dict)
    """(backend, error) -> calls."""
    router_seconds: dict[str, Buckets] = field(default_factory=dict)


@dataclass(frozen=True)
class PromReading:
    command_p50: float | None = None
    command_p95: float | None = None
    command_p99: float | None = None
    router: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    """backend -> {"rate": calls/s, "errorRate": share of failed calls, "p95": seconds}."""
    targets: Mapping[str, str] = field(default_factory=dict)
    """url -> "ok", or why it gave nothing."""


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of a histogram given as cumulative counts per upper bound, as Prometheus
    computes it (linear within the bucket; the highest finite bound when it falls in +Inf)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower_bound
            if count == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return bounds[-1] if not math.isinf(bounds[-1]) else lower_bound


def _delta(now: Mapping[float, float], before: Mapping[float, float]) -> Buckets:
    # A counter that went down was reset (the process restarted): its new value is the increase.
    return {le: (c - before.get(le, 0.0)) if c >= before.get(le, 0.0) else c for le, c in now.items()}


def _fold(text: str, into: _Scrape) -> bool:
    found = False
    command, calls, seconds = into.command, into.router_calls, into.router_seconds
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == COMMAND_LATENCY + "_bucket":
                le = float(s.labels["le"])
                command[le] = command.get(le, 0.0) + s.value
                found = True
            elif s.name == ROUTER_CALLS:
                key = (s.labels.get("backend", "?"), s.labels.get("outcome", "ok") not in _OK_OUTCOMES)
                calls[key] = calls.get(key, 0.0) + s.value
                found = True
            elif s.name == ROUTER_SECONDS + "_bucket":
                b = seconds.setdefault(s.labels.get("backend", "?"), {})
                le = float(s.labels["le"])
                b[le] = b.get(le, 0.0) + s.value
                found = True
    return found


class PromSource:
    """Scrapes ``urls`` on every ``read()`` and returns the figures since the previous one."""

    def __init__(self, urls: Sequence[str], *, timeout_s: float = 2.0) -> None:
        self.urls = tuple(urls)
        self.timeout_s = timeout_s
        self._previous: _Scrape | None = None
        self._previous_at = 0.0

    async def _get(self, client: httpx.AsyncClient, url: str) -> str:
        resp = await client.get(url)
        resp.raise_for_status()
        if len(resp.content) > _MAX_BODY:
            raise ValueError(f"answer larger than {_MAX_BODY} bytes")
        return resp.text

    async def read(self, at: float) -> PromReading:
        if not self.urls:
            return PromReading(targets={})
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            answers = await asyncio.gather(*(self._get(client, u) for u in self.urls), return_exceptions=True)
        scrape = _Scrape()
        targets: dict[str, str] = {}
        for url, answer in zip(self.urls, answers):
            if isinstance(answer, BaseException):
                targets[url] = f"unreachable: {type(answer).__name__}: {answer}"[:200]
                continue
            try:
                targets[url] = "ok" if _fold(answer, scrape) else "answers, but serves none of the dashboard's metrics"
            except ValueError as e:  # not Prometheus text
                targets[url] = f"unparsable: {e}"[:200]
        previous, self._previous = self._previous, scrape
        elapsed, self._previous_at = at - self._previous_at, at
        if previous is None or elapsed <= 0:
            return PromReading(targets=targets)  # the first scrape only sets the counters' origin
        command = _delta(scrape.command, previous.command)
        router: dict[str, dict[str, float | None]] = {}
        per_backend: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for (backend, error), n in scrape.router_calls.items():
            before = previous.router_calls.get((backend, error), 0.0)
            per_backend[backend][error] += n - before if n >= before else n
        for backend, (ok, failed) in per_backend.items():
            total = ok + failed
            router[backend] = {"rate": total / elapsed, "errorRate": failed / total if total else None,
                               "p95": histogram_quantile(0.95, _delta(scrape.router_seconds.get(backend, {}),
                                                                       previous.router_seconds.get(backend, {})))}
        return PromReading(histogram_quantile(0.5, command), histogram_quantile(0.95, command),
                           histogram_quantile(0.99, command), router, targets)
