"""/openapi.json tells the truth about access and errors: the bearer scheme, and on every route the
problem+json statuses it answers with. Built from the app alone, no stack needed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from assessment_store import Settings
from assessment_store.api import create_app

PROBLEM_REF = "#/components/schemas/Problem"
OPEN = {"/livez", "/readyz", "/healthz"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    """The document as served; building it needs no running Kafka or PostgreSQL."""
    document: dict[str, Any] = create_app(Settings()).openapi()
    return document


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def _statuses(operation: dict[str, Any]) -> set[int]:
    return {int(s) for s in operation["responses"]}


def test_the_bearer_scheme_is_declared_and_every_data_route_requires_it(spec: dict[str, Any]) -> None:
    """The HTTPBearer scheme is declared; every write and data read requires it and the probes do not."""
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer",
        "description": "ASSESSMENT_STORE_API_TOKEN (writes and reads) or ASSESSMENT_STORE_API_READ_TOKEN (reads)",
    }
    writes = [(p, o) for p, m, o in _operations(spec) if m == "post"]
    assert len(writes) == 7
    for path, method, operation in _operations(spec):
        if path in OPEN:
            assert "security" not in operation, path
        else:
            assert operation["security"] == [{"HTTPBearer": []}], (method, path)


def test_every_route_documents_the_problems_it_can_answer_with(spec: dict[str, Any]) -> None:
    """401/403 on authenticated routes, 404 on by-id routes, 409 on writes, 413/504 on writes, 408 on writes and
    the long poll, 422 where there is input, 503 wherever Kafka or PostgreSQL is touched; /livez only 200;
    /metrics (counters in memory, behind the read token) 200, 401 and 403."""
    for path, method, operation in _operations(spec):
        statuses = _statuses(operation)
        where = (method, path, sorted(statuses))
        if path == "/livez":
            assert statuses == {200}, where
            continue
        if path == "/metrics":
            assert statuses == {200, 401, 403}, where
            continue
        assert 503 in statuses, where
        if path in OPEN:
            assert statuses == {200, 503}, where
            continue
        assert {401, 403, 422} <= statuses, where
        assert (404 in statuses) == ("{" in path), where
        if method == "post":
            assert {400, 408, 409, 413, 504} <= statuses, where
        else:
            assert not {400, 409, 413, 504} & statuses, where
            assert (408 in statuses) == path.endswith("/wait"), where


def test_every_error_is_a_problem_and_the_framework_shape_is_gone(spec: dict[str, Any]) -> None:
    """Each 4xx/5xx is application/problem+json of the Problem schema only, with WWW-Authenticate on 401 and
    Retry-After on 503; FastAPI's HTTPValidationError (never sent) is documented nowhere."""
    for path, method, operation in _operations(spec):
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            where = (method, path, status)
            assert response["content"] == {"application/problem+json": {"schema": {"$ref": PROBLEM_REF}}}, where
            assert response["description"], where
            if status == "401":
                assert "WWW-Authenticate" in response["headers"], where
            if status == "503":
                assert response["headers"]["Retry-After"]["schema"] == {"type": "integer"}, where
    schemas = spec["components"]["schemas"]
    assert not {"HTTPValidationError", "ValidationError"} & set(schemas)
    problem = schemas["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    assert {"assessmentId", "commandId", "errors", "field", "expected", "actual", "retriable", "limitBytes",
            "checks"} <= set(problem["properties"])
    assert problem["properties"]["errors"]["items"] == {"$ref": "#/components/schemas/ProblemField"}
    assert problem["additionalProperties"] is True


def test_an_error_whose_attribute_shares_a_problem_member_name_is_still_a_problem() -> None:
    """KafkaAccessDenied carries a ``detail`` of its own: the answer is a 503 problem keeping it as errorDetail,
    never a 500 in plain text."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from assessment_store.api._problems import install_problem_handlers
    from assessment_store.core import KafkaAccessDenied

    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/denied")
    async def denied() -> None:
        raise KafkaAccessDenied("sending a command", "client", "authorization", "TOPIC_AUTHORIZATION_FAILED")

    r = TestClient(app).get("/denied")
    body = r.json()
    assert (r.status_code, r.headers["content-type"]) == (503, "application/problem+json")
    assert body["status"] == 503 and "Kafka refused principal 'client'" in body["detail"]
    assert body["errorDetail"] == "TOPIC_AUTHORIZATION_FAILED" and body["retriable"] is False
