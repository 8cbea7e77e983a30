"""The HTTP API's request metrics: an ASGI middleware counting every request by route template,
method and status, with its latency (docs/monitoring.md, "Metrics")."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from assessment_store.core import Histogram, MetricFamily, counter_by

from ._auth import require_reader
from ._openapi import problems

__all__ = ["HttpStats", "RequestMetrics", "router"]

UNMATCHED = "<unmatched>"
"""The route label of requests no route matched: their paths are the caller's, so they are never a label."""


@dataclass
class HttpStats:
    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """(route template, method, status) -> requests"""
    latency: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    """(route template, method) -> seconds to the end of the response"""

    def metric_families(self) -> list[MetricFamily]:
        p = "assessment_store_http_"
        return [
            counter_by(p + "requests_total", "HTTP requests, by route template, method and status",
                       ["route", "method", "status"], self.requests),
            MetricFamily(p + "request_seconds", "HTTP request latency, to the end of the response", "histogram",
                         ("route", "method"), histograms=tuple(sorted(self.latency.items()))),
        ]


class RequestMetrics:
    """ASGI middleware feeding ``HttpStats`` (the route is the matched template, read after the call)."""

    def __init__(self, app: ASGIApp, stats: HttpStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before starting a response

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = str(scope.get("method", ""))
            self.stats.requests[(route, method, str(status))] += 1
            key = (route, method)
            h = self.stats.latency.get(key)
            if h is None:
                h = self.stats.latency[key] = Histogram()
            h.observe(time.perf_counter() - started)


router = APIRouter(tags=["health"])


@router.get("/metrics", dependencies=[Depends(require_reader)], response_class=PlainTextResponse,
            responses=problems(401, 403))
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus exposition of this API's requests and its client's commands. A read endpoint: the
    scraper presents ASSESSMENT_STORE_API_READ_TOKEN (or the write token) as its bearer token."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return PlainTextResponse(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
