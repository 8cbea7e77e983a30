"""Errors as ``application/problem+json`` (RFC 9457), naming the ids involved; and the body
size limit, enforced while the body streams in (a missing or lying Content-Length cannot
get around it)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from assessment_store.core import (
    AssessmentNotFound,
    AssessmentStoreError,
    BackendError,
    CommandTimeout,
    InvalidTransition,
    StoreUsageError,
    ValidationError,
    VersionConflict,
    WaitTimeout,
)

__all__ = ["PROBLEM", "BodySizeLimit", "install_problem_handlers", "problem"]

PROBLEM = "application/problem+json"


def _printable(value: Any) -> Any:
    """``value`` with lone surrogates replaced (U+FFFD): an error may quote the input it refuses (a
    field name from the body, say), and a response must still encode as UTF-8."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace") if _has_surrogate(value) else value
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return value


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": f"https://assessment-store.dev/problems/{title.lower().replace(' ', '-')}",
            "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(_printable(body), status_code=status, media_type=PROBLEM)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _camel_path(path: str) -> str:
    """``processing_timeout_ms`` -> ``processingTimeoutMs``; ``request.a_b[3]`` keeps the document's own keys."""
    cut = min((i for i in (path.find("."), path.find("[")) if i >= 0), default=len(path))
    return _camel(path[:cut]) + path[cut:]


_PROBLEM_MEMBERS = frozenset({"type", "title", "status", "detail"})


def _member_name(attribute: str) -> str:
    """An error attribute's name in the problem body; one that would overwrite a member of the problem
    itself (KafkaAccessDenied's ``detail``) keeps its value under ``error<Name>`` instead."""
    name = _camel(attribute)
    return f"error{name[0].upper()}{name[1:]}" if name in _PROBLEM_MEMBERS else name


def _status(e: AssessmentStoreError) -> tuple[int, str]:
    match e:
        case AssessmentNotFound():
            return 404, "Assessment not found"
        case InvalidTransition():
            return 409, "Invalid transition"
        case VersionConflict():
            return 409, "Version conflict"
        case ValidationError():
            return 422, "Validation error"
        case CommandTimeout():
            return 504, "Command timeout"
        case WaitTimeout():
            return 408, "Wait timeout"
        case BackendError():
            return 503, "Backend unavailable"
        case StoreUsageError():
            return 400, "Bad request"
    return 500, "Store error"


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(AssessmentStoreError)
    async def _store_error(_req: Request, e: AssessmentStoreError) -> JSONResponse:
        status, title = _status(e)
        extra = {_member_name(k): v for k, v in vars(e).items() if not k.startswith("_") and k != "log_tail"}
        if isinstance(e, ValidationError):
            # The shape of the body-validation 422s below, with the API's camelCase field names.
            field = _camel_path(e.field)
            extra["field"] = field
            extra["errors"] = [{"field": field, "message": e.reason}]
        if status >= 500:
            extra["retriable"] = e.retriable
        resp = problem(status, title, str(e), **extra)
        if status == 503 and e.retriable:
            # An outage a client should ride out: say when to try again (RFC 9110, 10.2.3).
            resp.headers["Retry-After"] = "1"
        return resp

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, e: StarletteHTTPException) -> JSONResponse:
        # The framework's own refusals (an unparsable body, an unknown path, a wrong method) in the
        # same problem+json shape as ours.
        try:
            title = HTTPStatus(e.status_code).phrase
        except ValueError:
            title = "Error"
        resp = problem(e.status_code, title, str(e.detail))
        for k, v in (e.headers or {}).items():
            resp.headers[k] = v
        return resp

    @app.exception_handler(RequestValidationError)
    async def _bad_body(_req: Request, e: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in err["loc"] if p != "body"), "message": err["msg"]}
            for err in e.errors()
        ]
        detail = "; ".join(f"{x['field'] or 'body'}: {x['message']}" for x in errors)
        return problem(422, "Validation error", detail, errors=errors)


class BodySizeLimit:
    """ASGI middleware: 413 once a request body exceeds ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, send, int(declared))
            return
        # Read the whole body (bounded) before the app sees it: an error raised from inside the
        # app's own body parsing would be turned into a 400 by the framework.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await self._reject(scope, send, seen)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}],
                                      receive), send)

    async def _reject(self, scope: Scope, send: Send, size: int) -> None:
        response = problem(413, "Request too large",
                           f"request body of at least {size} bytes exceeds the limit of {self.max_bytes} bytes",
                           limitBytes=self.max_bytes)
        await response(scope, _empty_receive, send)


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A receive() that yields ``messages`` first, then defers to ``then`` (disconnect detection)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}
