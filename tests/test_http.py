"""The HTTP API served by uvicorn, against the session's real stack."""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from assessment_store.api import create_app
from assessment_store import Settings

pytestmark = pytest.mark.stack

TOKEN = "test-token-" + "x" * 32
READ_TOKEN = "read-token-" + "r" * 32


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
    """A client of the API served with write and read tokens and a 64 KiB body limit; it sends the
    write token (which also grants reads) unless a request says otherwise."""
    settings = stack_settings.model_copy(update={"api_token": SecretStr(TOKEN), "api_read_token": SecretStr(READ_TOKEN),
                                                 "api_max_body_bytes": 65536})
    async for base in _serve(settings):
        async with httpx.AsyncClient(base_url=base, timeout=30, headers=AUTH) as client:
            yield client


AUTH = {"Authorization": f"Bearer {TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}


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
    """Writes without a token get 401 with WWW-Authenticate; with a wrong token (or the read token) 403."""
    anonymous = httpx.AsyncClient(base_url=api.base_url)
    async with anonymous:
        r = await anonymous.post("/assessments", json={"request": 1})
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = await api.post("/assessments", json={"request": 1}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403
    r = await api.post("/assessments", json={"request": 1}, headers=READ)
    assert r.status_code == 403


async def test_the_bearer_scheme_is_case_insensitive(api: httpx.AsyncClient) -> None:
    """"bearer" and "BEARER" are the Bearer scheme (RFC 9110: schemes are case-insensitive); another scheme is a 401."""
    async with httpx.AsyncClient(base_url=api.base_url) as client:
        for scheme in ("bearer", "BEARER", "bEaReR"):
            r = await client.post("/assessments", json={"request": scheme}, headers={"Authorization": f"{scheme} {TOKEN}"})
            assert r.status_code == 201, (scheme, r.text)
            aid = r.json()["assessmentId"]
            r = await client.get(f"/assessments/{aid}", headers={"Authorization": f"{scheme} {READ_TOKEN}"})
            assert r.status_code == 200, (scheme, r.text)
        r = await client.get("/assessments", headers={"Authorization": f"Basic {TOKEN}"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


async def test_reads_need_the_read_or_the_write_token(api: httpx.AsyncClient) -> None:
    """Data reads answer 401 without a token and 403 with a wrong one; the read and the write token both work;
    /healthz and /openapi.json stay open."""
    aid = (await api.post("/assessments", json={"request": {"secret": 1}})).json()["assessmentId"]
    command_id = (await api.get(f"/assessments/{aid}/events")).json()[0]["causation_id"]
    paths = [f"/assessments/{aid}", "/assessments", f"/assessments/{aid}/events",
             f"/assessments/{aid}/wait?timeout=0.01", f"/commands/{command_id}"]
    async with httpx.AsyncClient(base_url=api.base_url) as anonymous:
        for path in paths:
            r = await anonymous.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), path
            assert (await anonymous.get(path, headers={"Authorization": "Bearer wrong"})).status_code == 403, path
            assert (await anonymous.get(path, headers=READ)).status_code in (200, 408), path
            assert (await anonymous.get(path, headers=AUTH)).status_code in (200, 408), path
        assert (await anonymous.get("/healthz")).status_code == 200
        spec = (await anonymous.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def test_reads_refused_when_no_token_is_configured(stack_settings: Settings) -> None:
    """Without any configured token, data reads answer 403 saying how to configure one; liveness stays open."""
    async for base in _serve(stack_settings.model_copy(update={"api_token": None, "api_read_token": None})):
        async with httpx.AsyncClient(base_url=base) as client:
            r = await client.get("/assessments", headers={"Authorization": "Bearer x"})
            health = await client.get("/healthz")
    assert r.status_code == 403 and "ASSESSMENT_STORE_API_READ_TOKEN" in r.json()["detail"]
    assert health.status_code == 200


async def test_writes_refused_when_no_token_is_configured(stack_settings: Settings) -> None:
    """Without a configured token every write answers 403 saying how to configure one."""
    async for base in _serve(stack_settings.model_copy(update={"api_token": None, "api_read_token": SecretStr("r")})):
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


# --- input the store cannot hold: refused at the edge (issue 9, defects 1, 4, 5, 6, 11) ---------------------------


def _field(r: httpx.Response) -> str:
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", (r.status_code, r.text)
    field: str = r.json()["errors"][0]["field"]
    return field


async def test_numbers_beyond_their_types_are_422_naming_the_field(api: httpx.AsyncClient) -> None:
    """maxRetries >= 2^31 and processingTimeoutMs, expectedVersion, durationMs >= 2^63 are 422s naming the field (not 500s)."""
    assert _field(await api.post("/assessments", json={"request": 1, "maxRetries": 2**31})) == "maxRetries"
    assert _field(await api.post("/assessments", json={"request": 1, "processingTimeoutMs": 2**63})) \
        == "processingTimeoutMs"
    aid = (await api.post("/assessments", json={"request": 1})).json()["assessmentId"]
    assert _field(await api.post(f"/assessments/{aid}/start", json={"expectedVersion": 2**63})) == "expectedVersion"
    await api.post(f"/assessments/{aid}/start", json={})
    assert _field(await api.post(f"/assessments/{aid}/complete", json={"result": 1, "durationMs": 2**63})) \
        == "durationMs"
    assert _field(await api.post(f"/assessments/{aid}/fail", json={"error": "e", "durationMs": 2**64})) == "durationMs"
    assert _field(await api.post("/assessments", json={"request": {"n": [2**63]}})) == "request.n[0]"
    # The largest values are accepted.
    r = await api.post("/assessments", json={"request": {"n": 2**63 - 1}, "maxRetries": 2**31 - 1,
                                             "processingTimeoutMs": 2**63 - 1})
    assert r.status_code == 201, r.text


async def test_types_are_strict(api: httpx.AsyncClient) -> None:
    """"50" and true are not a progress, "true" is not a boolean: 422 naming the field, nothing coerced."""
    aid = (await api.post("/assessments", json={"request": 1})).json()["assessmentId"]
    for bad in ("50", True, 50.0):
        assert _field(await api.post(f"/assessments/{aid}/progress", json={"progress": bad})) == "progress"
    assert _field(await api.post(f"/assessments/{aid}/fail", json={"error": "e", "retryable": "true"})) == "retryable"
    assert _field(await api.post("/assessments", json={"request": 1, "maxRetries": "3"})) == "maxRetries"
    assert (await api.get(f"/assessments/{aid}")).json()["version"] == 1


async def test_nul_in_any_string_is_422_and_writes_keep_working(api: httpx.AsyncClient) -> None:
    """A NUL in an error, message, reason, id or nested request is a 422 naming the field; afterwards the same
    assessment still takes writes (the pipeline did not stop on it)."""
    aid = (await api.post("/assessments", json={"request": 1})).json()["assessmentId"]
    assert _field(await api.post(f"/assessments/{aid}/fail", json={"error": "a\u0000b"})) == "error"
    assert _field(await api.post(f"/assessments/{aid}/progress", json={"progress": 1, "message": "\u0000"})) \
        == "message"
    assert _field(await api.post(f"/assessments/{aid}/cancel", json={"reason": "x\u0000"})) == "reason"
    assert _field(await api.post(f"/assessments/{aid}/start", json={"commandId": "c\u0000"})) == "commandId"
    assert _field(await api.post("/assessments", json={"request": {"a": ["ok", "b\u0000"]}})) == "request.a[1]"
    assert _field(await api.post("/assessments", json={"request": 1, "assessmentId": "n\u0000"})) == "assessmentId"
    r = await api.post(f"/assessments/{aid}/fail", json={"error": "a real error"})
    assert r.status_code == 200 and r.json()["state"] == "FAILED" and r.json()["errorMessage"] == "a real error"


async def test_lone_surrogates_in_a_body_are_422(api: httpx.AsyncClient) -> None:
    """A lone surrogate escape in a value, a request document or an object key is a 422, not a 500."""
    aid = (await api.post("/assessments", json={"request": 1})).json()["assessmentId"]
    headers = {"Content-Type": "application/json"}
    r = await api.post(f"/assessments/{aid}/fail", content=b'{"error": "a\\ud800b"}', headers=headers)
    assert _field(r) == "error"
    r = await api.post("/assessments", content=b'{"request": {"k": ["\\udfff"]}}', headers=headers)
    assert _field(r) == "request.k[0]"
    r = await api.post("/assessments", content=b'{"request": {"\\ud83d": 1}}', headers=headers)
    assert _field(r) == "request"
    r = await api.post("/assessments", content=b'{"request": 1, "\\ud800": 1}', headers=headers)
    assert r.status_code == 422 and r.json()["title"] == "Validation error"


async def test_a_deeply_nested_request_is_refused_and_lists_stay_readable(api: httpx.AsyncClient) -> None:
    """A request nested 500 levels is a 422 naming the limit (not stored), 64 levels are stored and read back,
    and list pages keep answering 200."""
    deep: object = 1
    for _ in range(500):
        deep = [deep]
    r = await api.post("/assessments", json={"request": deep, "assessmentId": "deep-500"})
    assert _field(r).startswith("request") and "deeper than 64" in r.json()["detail"]
    assert (await api.get("/assessments/deep-500")).status_code == 404
    ok: object = 1
    for _ in range(64):
        ok = {"k": ok}
    r = await api.post("/assessments", json={"request": ok})
    assert r.status_code == 201, r.text
    assert (await api.get(f"/assessments/{r.json()['assessmentId']}")).json()["requestData"] == ok
    assert (await api.get("/assessments", params={"limit": 1000})).status_code == 200


async def test_nul_in_an_id_or_a_cursor_and_bad_cursors_are_422(api: httpx.AsyncClient) -> None:
    """NUL in a path id or in a cursor is a 422 naming the field (not a retriable 503); a non-base64, empty or
    altered cursor is a 422, never "the first page"."""
    assert _field(await api.get("/assessments/a%00b")) == "assessmentId"
    assert _field(await api.get("/assessments/a%00b/events")) == "assessmentId"
    assert _field(await api.get("/commands/c%00d")) == "commandId"
    nul_cursor = base64.urlsafe_b64encode(b"a\x00b").decode()
    for cursor in (nul_cursor, "!!!not-base64!!!", "", "YQ", base64.urlsafe_b64encode(b"\xff\xfe").decode()):
        r = await api.get("/assessments", params={"cursor": cursor})
        assert _field(r) == "cursor", cursor
        assert "retriable" not in r.json()
    page = (await api.get("/assessments", params={"limit": 1})).json()
    assert (await api.get("/assessments", params={"cursor": page["nextCursor"]})).status_code == 200


async def test_liveness_and_readiness_are_open_and_readiness_checks_both_backends(
    api: httpx.AsyncClient, stack_settings: Settings
) -> None:
    """/livez answers without I/O; /readyz is 200 with both backends up and 503 + Retry-After naming Kafka when it is down."""
    async with httpx.AsyncClient(base_url=api.base_url) as anonymous:
        assert (await anonymous.get("/livez")).json() == {"status": "ok"}
        ready = await anonymous.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"postgres": "ok", "kafka": "ok"}

    no_kafka = stack_settings.model_copy(update={"bootstrap_servers": f"127.0.0.1:{_free_port()}"})
    async for base in _serve(no_kafka):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            live = await client.get("/livez")
            not_ready = await client.get("/readyz")
    assert live.status_code == 200
    assert not_ready.status_code == 503 and not_ready.headers["retry-after"] == "1"
    body = not_ready.json()
    assert body["checks"]["postgres"] == "ok" and body["checks"]["kafka"] != "ok" and "kafka" in body["detail"]


async def test_the_document_declares_every_status_and_shape_the_api_answers_with(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """Schemathesis, driven by /openapi.json, finds no status, content type, header or body that the document
    does not declare for its operation (and no 5xx)."""
    # A short long-poll cap keeps the 408s cheap; the fuzzing phase alone, because it reaches unknown ids (404s)
    # and unreadable bodies (400s) within the budget, where the coverage phase spends it on generation.
    settings = stack_settings.model_copy(update={"api_token": SecretStr(TOKEN), "api_max_wait_s": 0.5})
    async for base in _serve(settings):
        st = Path(sys.executable).with_name("schemathesis")
        run = await asyncio.to_thread(
            subprocess.run,
            [str(st), "run", f"{base}/openapi.json", "-H", f"Authorization: Bearer {TOKEN}",
             "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                         "response_headers_conformance,response_schema_conformance",
             # No time limit: on a loaded machine a limit ends the run after a few operations; the example
             # count bounds it instead (5 per operation).
             "--generation-with-security-parameters", "false", "--max-examples", "5",
             "--workers", "1", "--request-timeout", "20", "--generation-deterministic", "--no-color",
             "--report", "junit", "--report-junit-path", str(tmp_path / "junit.xml"),
             "--phases", "fuzzing"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )
        async with httpx.AsyncClient(base_url=base) as client:
            document = (await client.get("/openapi.json")).json()
    report = run.stdout[-8000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    declared = sum(len(methods) for methods in document["paths"].values())
    operations = ET.parse(tmp_path / "junit.xml").getroot().iter("testcase")
    assert sum(1 for _ in operations) == declared, report
