"""The dashboard's web face: a small FastAPI application over a ``Sampler``.

Routes (all read-only, all behind the token):

* ``GET /``: the page (``dashboard/static/index.html``); ``/?token=T`` sets the session cookie and
  redirects to ``/``, so the token leaves the address bar and the history;
* ``GET /static/...``: the page's script and style, and the vendored charting library;
* ``GET /api/history?minutes=N``: the history (the last N minutes, default all of it) and the
  current tables, what the page draws on load; partition series are left out, and served one
  group at a time with ``&group=G`` (the partition chart's);
* ``GET /api/stream``: Server-Sent Events, one ``sample`` event per tick (and a comment every
  15 s, so a dead connection is noticed); a client that goes away is unsubscribed;
* ``GET /healthz``: unauthenticated liveness, no data.

Access follows the HTTP API's rules: ``ASSESSMENT_STORE_API_READ_TOKEN`` or
``ASSESSMENT_STORE_API_TOKEN`` as ``Authorization: Bearer``, or the HttpOnly cookie the page's
``?token=`` set; with neither token configured every data route answers 403 (closed, not open).
The cookie holds an HMAC of the token, not the token: it opens the dashboard and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import SecretStr

from assessment_store.core import Settings

from ._sampler import Sampler

__all__ = ["COOKIE", "STATIC_DIR", "dashboard_app", "serve_dashboard"]

STATIC_DIR = Path(__file__).parent / "dashboard" / "static"
COOKIE = "assessment_store_dashboard"
_HEARTBEAT_S = 15.0
_MAX_TOKEN_CHARS = 512


def _tokens(settings: Settings) -> list[str]:
    return [t.get_secret_value() for t in (settings.api_read_token, settings.api_token)
            if isinstance(t, SecretStr) and t.get_secret_value()]


def _session(token: str) -> str:
    return hmac.new(token.encode(), b"assessment-store dashboard session", hashlib.sha256).hexdigest()


def _matches(presented: str, candidates: list[str]) -> bool:
    # Every candidate compared in constant time, whichever matches: no timing leak of the token.
    ok = False
    for c in candidates:
        ok |= hmac.compare_digest(presented.encode(), c.encode())
    return ok


def _refusal(status: int, detail: str) -> Response:
    resp = JSONResponse({"type": "about:blank", "title": "Unauthorized" if status == 401 else "Forbidden",
                         "status": status, "detail": detail}, status_code=status,
                        media_type="application/problem+json")
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="assessment-store"'
    return resp


def _authorize(request: Request, settings: Settings) -> Response | None:
    """None when the request may read; otherwise the refusal to send."""
    tokens = _tokens(settings)
    if not tokens:
        return _refusal(403, "the dashboard is closed: no API token is configured; set ASSESSMENT_STORE_API_READ_TOKEN "
                             "(or ASSESSMENT_STORE_API_TOKEN) and open /?token=<token> once")
    auth = request.headers.get("authorization", "")
    scheme, _, credentials = auth.partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return None if _matches(credentials.strip()[:_MAX_TOKEN_CHARS], tokens) else _refusal(
            403, "the bearer token is not valid")
    cookie = request.cookies.get(COOKIE)
    if cookie:
        return None if _matches(cookie[:_MAX_TOKEN_CHARS], [_session(t) for t in tokens]) else _refusal(
            403, "the session cookie is not valid (the token changed?): open /?token=<token> again")
    return _refusal(401, "the dashboard needs 'Authorization: Bearer <token>', or open /?token=<token> once")


def dashboard_app(settings: Settings, sampler: Sampler) -> FastAPI:
    """The application; the caller runs ``sampler`` (the app neither starts nor stops it)."""
    app = FastAPI(title="assessment-store dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    max_clients = settings.dashboard_max_clients

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Response:
        if request.url.path == "/healthz":
            return await call_next(request)  # type: ignore[no-any-return]
        token = request.query_params.get("token")
        if request.url.path == "/" and token is not None:
            if not _matches(token[:_MAX_TOKEN_CHARS], _tokens(settings)):
                return _refusal(403, "the token is not valid")
            resp = RedirectResponse("/", status_code=303)
            resp.set_cookie(COOKIE, _session(token), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
            return resp
        refusal = _authorize(request, settings)
        if refusal is not None:
            return refusal
        resp = await call_next(request)
        resp.headers.setdefault("Cache-Control", "no-store")
        # Nothing but the product's own assets: no CDN, no inline script, no framing (inline styles
        # stay allowed: the charting library sizes its canvas through them).
        resp.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; "
                                                   "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp  # type: ignore[no-any-return]

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "ticks": sampler.ticks, "liveClients": sampler.subscribers}

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/static/{path:path}")
    async def static(path: str) -> Response:
        target = (STATIC_DIR / path).resolve()
        if not target.is_relative_to(STATIC_DIR.resolve()) or not target.is_file():
            return JSONResponse({"title": "Not Found", "status": 404}, status_code=404)
        return FileResponse(target)

    @app.get("/api/history")
    async def history(minutes: float | None = Query(default=None, gt=0, le=7 * 24 * 60),
                      group: str | None = Query(default=None, max_length=300)) -> Response:
        since = None if minutes is None else time.time() - minutes * 60
        # Partition series are many (groups x partitions x 2): the page asks for one group's at a time.
        exported = (sampler.history.export(since=since, exclude_prefix="p:") if group is None
                    else sampler.history.export(since=since, prefix=f"p:{group}:"))
        body = {"resolution": sampler.resolution_s, "capacity": sampler.history.capacity, **exported,
                "current": sampler.current}
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    @app.get("/api/stream")
    async def stream(request: Request) -> Response:
        if sampler.subscribers >= max_clients:
            return JSONResponse({"title": "Service Unavailable", "status": 503,
                                 "detail": f"{max_clients} live clients already"}, status_code=503,
                                headers={"Retry-After": "10"})
        sub = sampler.subscribe()

        async def events() -> AsyncIterator[str]:
            try:
                yield f"retry: 5000\n: {sampler.ticks} ticks so far\n\n"
                while not sub.closed:
                    try:
                        point = await asyncio.wait_for(sub.queue.get(), timeout=_HEARTBEAT_S)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield ": keep-alive\n\n"
                        continue
                    yield f"event: sample\ndata: {json.dumps(point, separators=(',', ':'))}\n\n"
            finally:
                # Runs however the stream ends: the client went away (the server cancels this
                # generator), the sampler dropped it, or the server stops.
                sampler.unsubscribe(sub)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return app


async def serve_dashboard(settings: Settings, *, host: str | None = None, port: int | None = None,
                          on_ready: Callable[[], None] | None = None) -> None:
    """``assessment-store dashboard``: sample in the background and serve the page until SIGTERM/SIGINT;
    ``on_ready`` is called once the server listens (the stack's readiness file)."""
    import uvicorn

    async with Sampler(settings) as sampler:
        config = uvicorn.Config(dashboard_app(settings, sampler), host=host or settings.dashboard_host,
                                port=port or settings.dashboard_port, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        if on_ready is not None:
            # uvicorn sets ``started`` once its sockets listen; a server that fails to bind ends
            # ``serve`` first (and exits the process), so the wait is bounded by either.
            while not server.started and not serving.done():
                await asyncio.sleep(0.05)
            if server.started:
                on_ready()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
