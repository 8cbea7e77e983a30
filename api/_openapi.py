"""What /openapi.json says about errors: the shape of every problem+json body (``Problem``) and,
route by route, the statuses it answers with (``problems``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.json_schema import SkipJsonSchema

from ._problems import PROBLEM

__all__ = ["Problem", "ProblemField", "problems", "with_problem_schema"]

_REF = "#/components/schemas/{model}"


def _members_only(schema: dict[str, Any]) -> None:
    # The optional members are absent when they do not apply, never null: a ``default: null`` (and
    # pydantic's titles derived from the snake_case names) would only mislead a reader.
    for member in schema.get("properties", {}).values():
        member.pop("default", None)
        member.pop("title", None)


class ProblemField(BaseModel):
    model_config = ConfigDict(json_schema_extra=_members_only)

    field: str = Field(description="camelCase path of the value, e.g. `progress` or `request.a[1]`; empty for "
                                   "the whole body.")
    message: str


class Problem(BaseModel):
    """An error (RFC 9457). Besides type, title, status and detail it carries the ids and values the
    error names, so a client can act on it without parsing `detail`; which ones depends on the error."""

    # Documentation only: the bodies are built by ``_problems.problem``, so members this model does
    # not list may appear (additionalProperties), and those it lists are absent unless they apply.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow",
                              json_schema_extra=_members_only)

    type: str = Field(description="URI naming the kind of problem, e.g. "
                                  "https://assessment-store.dev/problems/assessment-not-found")
    title: str
    status: int
    detail: str
    assessment_id: str | SkipJsonSchema[None] = None
    command_id: str | SkipJsonSchema[None] = None
    field: str | SkipJsonSchema[None] = Field(default=None, description="422: the first field refused.")
    reason: str | SkipJsonSchema[None] = None
    errors: list[ProblemField] | SkipJsonSchema[None] = Field(default=None, description="422: every field refused.")
    state: str | SkipJsonSchema[None] = Field(default=None, description="409: the state the transition is not "
                                                                        "allowed from.")
    transition: str | SkipJsonSchema[None] = None
    expected: int | SkipJsonSchema[None] = Field(default=None, description="409: the expectedVersion sent.")
    actual: int | SkipJsonSchema[None] = Field(default=None, description="409: the assessment's version.")
    timeout_s: float | SkipJsonSchema[None] = None
    waiting_for: str | SkipJsonSchema[None] = None
    retriable: bool | SkipJsonSchema[None] = Field(default=None, description="5xx: whether the same request may "
                                                                            "succeed later.")
    limit_bytes: int | SkipJsonSchema[None] = Field(default=None, description="413: the body size limit.")
    checks: dict[str, str] | SkipJsonSchema[None] = Field(default=None, description="/readyz: `ok` or what "
                                                                                   "failed, per backend.")
    what: str | SkipJsonSchema[None] = None
    principal: str | None = None
    sqlstate: str | None = None


_WHY: dict[int, str] = {
    400: "The body could not be read, or the command was refused for a reason this API has no status for",
    401: "No bearer token: no Authorization header, or not of the Bearer scheme (matched case-insensitively); "
         "WWW-Authenticate names it",
    403: "The bearer token is not valid here, or no token is configured to allow this route",
    404: "No assessment has this id",
    408: "The projection did not show the accepted command's event in time (re-sending the same commandId is safe)",
    409: "The state machine forbids this transition from the current state, or expectedVersion differs",
    413: "The body exceeds ASSESSMENT_STORE_API_MAX_BODY_BYTES",
    422: "A field, parameter or value is invalid; `errors` names every field",
    503: "Kafka or PostgreSQL is unavailable; Retry-After (seconds) when retrying may succeed",
    504: "No outcome for the command within the command timeout (is the command processor running?); "
         "re-sending the same commandId is safe",
}

_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "The scheme to use: Bearer.", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "Seconds to wait before retrying; sent when `retriable` is true.",
                          "schema": {"type": "integer"}}},
}


def problems(*statuses: int, why: Mapping[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status as a problem+json ``Problem``, described by ``why``
    where the route's reason differs from the common one."""
    reasons = {**_WHY, **(why or {})}
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out[status] = {"description": reasons[status],
                       "content": {PROBLEM: {"schema": {"$ref": _REF.format(model="Problem")}}}}
        if status in _HEADERS:
            out[status]["headers"] = _HEADERS[status]
    return out


def with_problem_schema(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with ``Problem`` among its component schemas: the routes reference it from
    application/problem+json contents, which FastAPI does not collect models from."""
    schema = Problem.model_json_schema(by_alias=True, ref_template=_REF, mode="serialization")
    components: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    components.update(schema.pop("$defs", {}))
    components["Problem"] = schema
    return document
