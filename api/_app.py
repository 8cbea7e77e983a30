"""The FastAPI application: ``create_app(settings)``; served by ``assessment-store serve``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from assessment_store.client import AssessmentStore
from assessment_store.core import VERSION, Settings, metrics_registry

from . import _health, _metrics, _reads, _writes
from ._auth import install_auth_handler
from ._metrics import HttpStats, RequestMetrics
from ._openapi import with_problem_schema
from ._problems import BodySizeLimit, install_problem_handlers
from ._state import attach

__all__ = ["create_app"]


class _App(FastAPI):
    def openapi(self) -> dict[str, Any]:
        # The routes reference the Problem schema from application/problem+json contents, from which
        # FastAPI collects no models: add it once, to the document it caches.
        if self.openapi_schema is None:
            self.openapi_schema = with_problem_schema(super().openapi())
        return self.openapi_schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    store = AssessmentStore(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with store:
            yield

    app = _App(
        title="AssessmentStore",
        version=VERSION,
        description="Event-sourced assessment store on Apache Kafka and PostgreSQL. Writes need "
        "`Authorization: Bearer <ASSESSMENT_STORE_API_TOKEN>`; reads of data and /metrics need that token or "
        "`ASSESSMENT_STORE_API_READ_TOKEN` (/livez, /readyz, /healthz and this document are open); errors are "
        "application/problem+json (the Problem schema).",
        lifespan=lifespan,
    )
    attach(app, settings, store)
    app.state.readiness = _health.Readiness()
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    # Outermost (added last): counts every request, a 413 from the size limit included.
    http_stats = HttpStats()
    app.add_middleware(RequestMetrics, stats=http_stats)
    app.state.http_stats = http_stats
    app.state.metrics_registry = metrics_registry(http_stats, store.stats)
    install_problem_handlers(app)
    install_auth_handler(app)
    for module in (_writes, _reads, _health, _metrics):
        app.include_router(module.router)
    return app
