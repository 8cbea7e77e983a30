"""The HTTP API served by uvicorn, against the session's real stack."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from api import create_app
from assessment_store import Settings

pytestmark = pytest.mark.stack

TOKEN = "test-token-" + "x" * 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serve(settings: Settings) -> AsyncIterator[str]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    assert server.started, "uvicorn did not start within 10 s"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="session")
async def api(stack_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the API served with a configured token and a 64 KiB body limit."""
    settings = stack_settings.model_copy(update={"api_token": SecretStr(TOKEN), "api_max_body_bytes": 65536})
    async for base in _serve(settings):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            yield client


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_lifecycle_over_http(api: httpx.AsyncClient) -> None:
    """create, start, progress, complete, get, events, wait and list work with camelCase JSON."""
    r = await api.post("/assessments", json={"request": {"subject": "http"}}, headers=AUTH)
    assert r.status_code == 201, r.text
    aid = r.json()["assessmentId"]
    assert r.json()["state"] == "PENDING" and r.json()["requestData"] == {"subject": "http"}
    assert (await api.post(f"/assessments/{aid}/start", json={}, headers=AUTH)).json()["state"] == "PROCESSING"
    r = await api.post(f"/assessments/{aid}/progress", json={"progress": 40, "message": "m"}, headers=AUTH)
    assert (r.json()["progress"], r.json()["message"]) == (40, "m")
    r = await api.post(f"/assessments/{aid}/complete", json={"result": {"score": 9}}, headers=AUTH)
    assert r.json()["state"] == "COMPLETED" and r.json()["version"] == 4
    assert (await api.get(f"/assessments/{aid}")).json()["resultData"] == {"score": 9}
    events = (await api.get(f"/assessments/{aid}/events")).json()
    assert [e["version"] for e in events] == [1, 2, 3, 4]
    assert (await api.get(f"/assessments/{aid}/wait", params={"timeout": 5})).json()["state"] == "COMPLETED"
    page = (await api.get("/assessments", params={"state": "COMPLETED", "limit": 1000})).json()
    assert aid in [a["assessmentId"] for a in page["items"]]


async def test_list_pages_with_a_cursor(api: httpx.AsyncClient) -> None:
    """Paging with limit=2 and nextCursor visits every assessment once, in id order."""
    for i in range(5):
        await api.post("/assessments", json={"request": i, "assessmentId": f"page-{i}"}, headers=AUTH)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 2, "state": "PENDING"}
        if cursor:
            params["cursor"] = cursor
        body = (await api.get("/assessments", params=params)).json()
        seen += [a["assessmentId"] for a in body["items"]]
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    assert {f"page-{i}" for i in range(5)} <= set(seen)


async def test_auth_missing_token_is_401_wrong_token_is_403(api: httpx.AsyncClient) -> None:
    """Writes without a token get 401 with WWW-Authenticate; with a wrong token 403; reads need none."""
    r = await api.post("/assessments", json={"request": 1})
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = await api.post("/assessments", json={"request": 1}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403
    assert (await api.get("/healthz")).status_code == 200


async def test_writes_refused_when_no_token_is_configured(stack_settings: Settings) -> None:
    """Without a configured token every write answers 403 saying how to configure one."""
    async for base in _serve(stack_settings.model_copy(update={"api_token": None})):
        async with httpx.AsyncClient(base_url=base) as client:
            r = await client.post("/assessments", json={"request": 1}, headers={"Authorization": "Bearer x"})
    assert r.status_code == 403 and "ASSESSMENT_STORE_API_TOKEN" in r.json()["detail"]


async def test_bad_body_is_422_with_the_field(api: httpx.AsyncClient) -> None:
    """A progress of 150 and an unknown field each give 422 naming the field."""
    aid = (await api.post("/assessments", json={"request": 1}, headers=AUTH)).json()["assessmentId"]
    r = await api.post(f"/assessments/{aid}/progress", json={"progress": 150}, headers=AUTH)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "progress"
    r = await api.post(f"/assessments/{aid}/progress", json={"progress": 5, "bogus": 1}, headers=AUTH)
    assert r.status_code == 422 and "bogus" in r.json()["detail"]


async def test_oversize_body_is_413(api: httpx.AsyncClient) -> None:
    """A body above the configured limit is refused with 413, with or without Content-Length."""
    big = {"request": "x" * 70_000}
    r = await api.post("/assessments", json=big, headers=AUTH)
    assert r.status_code == 413 and r.json()["limitBytes"] == 65536

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"request": "'
        for _ in range(10):
            yield b"y" * 10_000
        yield b'"}'

    r = await api.post("/assessments", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413


async def test_unknown_id_is_404_and_conflicts_are_409(api: httpx.AsyncClient) -> None:
    """Unknown ids give 404 naming the id; an illegal transition and a stale version give 409."""
    r = await api.get("/assessments/nope-404")
    assert r.status_code == 404 and r.json()["assessmentId"] == "nope-404"
    r = await api.post("/assessments/nope-404/start", json={}, headers=AUTH)
    assert r.status_code == 404
    aid = (await api.post("/assessments", json={"request": 1}, headers=AUTH)).json()["assessmentId"]
    r = await api.post(f"/assessments/{aid}/complete", json={"result": 1}, headers=AUTH)
    assert r.status_code == 409 and r.json()["state"] == "PENDING" and r.json()["transition"] == "complete"
    r = await api.post(f"/assessments/{aid}/start", json={"expectedVersion": 7}, headers=AUTH)
    assert r.status_code == 409 and (r.json()["expected"], r.json()["actual"]) == (7, 1)


async def test_openapi_is_published(api: httpx.AsyncClient) -> None:
    """/openapi.json lists the write and read paths."""
    spec = (await api.get("/openapi.json")).json()
    assert {"/assessments", "/assessments/{assessment_id}/wait", "/commands/{command_id}"} <= set(spec["paths"])


async def test_wait_times_out_with_408(api: httpx.AsyncClient) -> None:
    """The long poll answers 408 naming the id and timeout when nothing finishes in time."""
    aid = (await api.post("/assessments", json={"request": 1}, headers=AUTH)).json()["assessmentId"]
    r = await api.get(f"/assessments/{aid}/wait", params={"timeout": 0.2})
    assert r.status_code == 408 and r.json()["assessmentId"] == aid and r.json()["timeoutS"] == 0.2
