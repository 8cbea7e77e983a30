"""The FastAPI application: ``create_app(settings)``; served by ``assessment-store serve``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from assessment_store.core import VERSION
from assessment_store.core import Settings
from assessment_store.core import metrics_registry
from assessment_store.core import validate_id
from assessment_store.core import ValidationError
from assessment_store.core import (
    Cancel,
    Command,
    Complete,
    Create,
    Fail,
    Retry,
    Start,
    State,
    UpdateProgress,
    new_id,
)
from assessment_store.client import AssessmentStore

from ._models import (
    AssessmentOut,
    CancelIn,
    CommandIn,
    CompleteIn,
    CreateIn,
    FailIn,
    OutcomeOut,
    PageOut,
    ProgressIn,
    StartIn,
)
from ._metrics import HttpStats, RequestMetrics
from ._problems import BodySizeLimit, install_problem_handlers, problem

__all__ = ["create_app"]


class _AuthError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail


def _cursor(assessment_id: str) -> str:
    return base64.urlsafe_b64encode(assessment_id.encode()).decode()


def _uncursor(cursor: str) -> str:
    """The id a cursor of ``_cursor`` stands for; anything else is a ValidationError (422), never
    "the first page": ``urlsafe_b64decode`` alone skips characters outside the alphabet."""
    try:
        after = base64.b64decode(cursor.encode("ascii"), altchars=b"-_", validate=True).decode("utf-8")
        validate_id(after)
    except (ValueError, binascii.Error, UnicodeError, ValidationError) as e:
        raise ValidationError("cursor", "is not a cursor returned by this API") from e
    if _cursor(after) != cursor:  # other padding or trailing bits: not what this API wrote
        raise ValidationError("cursor", "is not a cursor returned by this API")
    return after


# HTTPBearer (not a plain header parameter) so /openapi.json declares the scheme; auto_error off so a
# missing token is our 401 problem, not the framework's. Module level: the dependencies' annotations
# are resolved against module globals.
_bearer = HTTPBearer(auto_error=False, description="ASSESSMENT_STORE_API_TOKEN (writes and reads) or "
                                                   "ASSESSMENT_STORE_API_READ_TOKEN (reads)")


def _token_matches(presented: str, *configured: SecretStr | None) -> bool:
    """Constant-time comparison against every configured token (all are compared, whichever
    matches): the token must not leak through response timing."""
    ok = False
    for token in configured:
        if token is not None and token.get_secret_value():
            ok |= hmac.compare_digest(presented.encode(), token.get_secret_value().encode())
    return ok


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    store = AssessmentStore(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with store:
            yield

    app = FastAPI(
        title="AssessmentStore",
        version=VERSION,
        description="Event-sourced assessment store on Apache Kafka and PostgreSQL. Writes need "
        "`Authorization: Bearer <ASSESSMENT_STORE_API_TOKEN>`; reads of data need that token or "
        "`ASSESSMENT_STORE_API_READ_TOKEN` (/livez, /readyz, /healthz and this document are open); errors are application/problem+json.",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    # Outermost (added last): counts every request, a 413 from the size limit included.
    http_stats = HttpStats()
    app.add_middleware(RequestMetrics, stats=http_stats)
    registry = metrics_registry(http_stats, store.stats)
    app.state.http_stats = http_stats
    install_problem_handlers(app)

    @app.exception_handler(_AuthError)
    async def _auth_error(_req: Request, e: _AuthError) -> JSONResponse:
        resp = problem(e.status, "Unauthorized" if e.status == 401 else "Forbidden", e.detail)
        if e.status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="assessment-store"'
        return resp

    def _configured(token: SecretStr | None) -> bool:
        return token is not None and bool(token.get_secret_value())

    def _check(credentials: HTTPAuthorizationCredentials | None, *tokens: SecretStr | None) -> None:
        if credentials is None:
            raise _AuthError(401, "this endpoint needs 'Authorization: Bearer <token>'")
        if not _token_matches(credentials.credentials, *tokens):
            raise _AuthError(403, "the bearer token is not valid")

    async def require_writer(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if not _configured(settings.api_token):
            raise _AuthError(403, "writes are disabled: no API token is configured; set ASSESSMENT_STORE_API_TOKEN "
                                  "to a long random secret and send it as 'Authorization: Bearer <token>'")
        _check(credentials, settings.api_token)

    async def require_reader(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        # Reads return every request and result: closed by default, like writes.
        if not (_configured(settings.api_read_token) or _configured(settings.api_token)):
            raise _AuthError(403, "reads are disabled: no API token is configured; set ASSESSMENT_STORE_API_READ_TOKEN "
                                  "(or ASSESSMENT_STORE_API_TOKEN) and send it as 'Authorization: Bearer <token>'")
        _check(credentials, settings.api_read_token, settings.api_token)

    # As route dependencies, not parameters: the annotations of these nested functions are
    # resolved against module globals (postponed evaluation), where a local alias is invisible.
    writer = [Depends(require_writer)]
    reader = [Depends(require_reader)]

    async def run(command: Command, body: CommandIn) -> AssessmentOut:
        return AssessmentOut.of(await store.execute(command, fresh_id=body.command_id is None))

    def ids(assessment_id: str, body: CommandIn) -> dict[str, Any]:
        return {"assessment_id": assessment_id,
                "command_id": body.command_id if body.command_id is not None else new_id(),
                "expected_version": body.expected_version}

    @app.post("/assessments", status_code=201, response_model=AssessmentOut, tags=["write"], dependencies=writer)
    async def create(body: CreateIn) -> AssessmentOut:
        """Create a PENDING assessment."""
        return await run(Create(request=body.request, processing_timeout_ms=body.processing_timeout_ms,
                                max_retries=body.max_retries, **ids(body.assessment_id if body.assessment_id is not None else new_id(), body)), body)

    @app.post("/assessments/{assessment_id}/start", response_model=AssessmentOut, tags=["write"], dependencies=writer)
    async def start(assessment_id: str, body: StartIn) -> AssessmentOut:
        """PENDING -> PROCESSING."""
        return await run(Start(worker=body.worker, **ids(assessment_id, body)), body)

    @app.post("/assessments/{assessment_id}/progress", response_model=AssessmentOut, tags=["write"], dependencies=writer)
    async def progress(assessment_id: str, body: ProgressIn) -> AssessmentOut:
        """Record progress 0-100 while PENDING or PROCESSING."""
        return await run(UpdateProgress(progress=body.progress, message=body.message, **ids(assessment_id, body)), body)

    @app.post("/assessments/{assessment_id}/complete", response_model=AssessmentOut, tags=["write"], dependencies=writer)
    async def complete(assessment_id: str, body: CompleteIn) -> AssessmentOut:
        """PROCESSING -> COMPLETED."""
        return await run(Complete(result=body.result, duration_ms=body.duration_ms, **ids(assessment_id, body)), body)

    @app.post("/assessments/{assessment_id}/fail", response_model=AssessmentOut, tags=["write"], dependencies=writer)
    async def fail(assessment_id: str, body: FailIn) -> AssessmentOut:
        """PENDING or PROCESSING -> FAILED."""
        return await run(Fail(error=body.error, retryable=body.retryable, duration_ms=body.duration_ms, **ids(assessment_id, body)), body)

    @app.post("/assessments/{assessment_id}/cancel", response_model=AssessmentOut, tags=["write"], dependencies=writer)
    async def cancel(assessment_id: str, body: CancelIn) -> AssessmentOut:
        """PENDING or PROCESSING -> CANCELLED."""
        return await run(Cancel(reason=body.reason, **ids(assessment_id, body)), body)

    @app.post("/assessments/{assessment_id}/retry", response_model=AssessmentOut, tags=["write"], dependencies=writer)
    async def retry(assessment_id: str, body: CommandIn) -> AssessmentOut:
        """FAILED -> PENDING, retry count + 1."""
        return await run(Retry(**ids(assessment_id, body)), body)

    @app.get("/assessments/{assessment_id}", response_model=AssessmentOut, tags=["read"], dependencies=reader)
    async def get(assessment_id: str) -> AssessmentOut:
        """Current state from the projection."""
        return AssessmentOut.of(await store.get_state(assessment_id))

    @app.get("/assessments", response_model=PageOut, tags=["read"], dependencies=reader)
    async def list_(
        state: Annotated[State | None, Query(description="Only this state.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(description="nextCursor of the previous page.")] = None,
    ) -> PageOut:
        """Assessments ordered by id, a page at a time."""
        items = await store.list_assessments(state=state, after=_uncursor(cursor) if cursor is not None else None,
                                             limit=limit)
        nxt = _cursor(items[-1].assessment_id) if len(items) == limit else None
        return PageOut(items=[AssessmentOut.of(a) for a in items], next_cursor=nxt)

    @app.get("/assessments/{assessment_id}/events", tags=["read"], dependencies=reader)
    async def events(assessment_id: str) -> list[dict[str, Any]]:
        """The assessment's event history: version, type, when, source, payload, Kafka position."""
        await store.get_state(assessment_id)  # 404 for an unknown id rather than an empty list
        return await store.get_history(assessment_id)

    @app.get("/assessments/{assessment_id}/wait", response_model=AssessmentOut, tags=["read"], dependencies=reader)
    async def wait(
        assessment_id: str,
        timeout: Annotated[float, Query(gt=0, allow_inf_nan=False, description="Seconds; 408 when it passes.")] = 30.0,
    ) -> AssessmentOut:
        """Long poll: answers as soon as the assessment is COMPLETED, FAILED or CANCELLED."""
        await store.get_state(assessment_id)
        return AssessmentOut.of(await store.wait_for_completion(assessment_id, min(timeout, settings.api_max_wait_s)))

    @app.get("/commands/{command_id}", response_model=OutcomeOut, tags=["read"], dependencies=reader)
    async def outcome(command_id: str) -> OutcomeOut | JSONResponse:
        """What became of a command."""
        found = await store.get_outcome(command_id)
        if found is None:
            return problem(404, "Command not found", f"no outcome for command {command_id!r} (yet)",
                           commandId=command_id)
        return OutcomeOut.of(found)

    @app.get("/livez", tags=["health"])
    async def livez() -> dict[str, str]:
        """Liveness: the process answers. No I/O, so an orchestrator never restarts the API for an
        outage of Kafka or PostgreSQL (open: no token)."""
        return {"status": "ok"}

    ready_cache: dict[str, Any] = {"until": 0.0, "checks": {}}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "Kafka or PostgreSQL not ready "
                                                            "(problem+json naming which, with Retry-After)"}})
    async def readyz() -> Any:
        """Readiness: PostgreSQL answers a query and Kafka a metadata request (each within 3 s; results
        reused for 1 s, so probes cannot load the backends). 503 names what is not ready (open: no token)."""
        loop = asyncio.get_running_loop()
        if loop.time() >= ready_cache["until"]:
            ready_cache["checks"] = await store.readiness()
            ready_cache["until"] = loop.time() + 1.0
        checks: dict[str, str] = ready_cache["checks"]
        failing = {k: v for k, v in checks.items() if v != "ok"}
        if failing:
            resp = problem(503, "Not ready", "; ".join(f"{k}: {v}" for k, v in failing.items()), checks=checks,
                           retriable=True)
            resp.headers["Retry-After"] = "1"
            return resp
        return {"status": "ready", "checks": checks}

    @app.get("/metrics", tags=["health"], dependencies=reader, response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        """Prometheus exposition of this API's requests and its client's commands. A read endpoint: the
        scraper presents ASSESSMENT_STORE_API_READ_TOKEN (or the write token) as its bearer token."""
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        """Liveness plus the store's counts per state (open: no token; counts name no assessment)."""
        return {"status": "ok", "counts": {k.value: v for k, v in (await store.count_by_state()).items()}}

    return app
