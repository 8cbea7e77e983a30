"""The data reads: an assessment, a page of them, its history, a long poll for its end, and what
became of a command. All answer from the PostgreSQL projection."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from assessment_store.core import State, ValidationError, validate_id

from ._auth import require_reader
from ._models import AssessmentOut, OutcomeOut, PageOut
from ._openapi import problems
from ._problems import problem
from ._state import SettingsDep, StoreDep

__all__ = ["router"]

router = APIRouter(tags=["read"], dependencies=[Depends(require_reader)])

# Every data read: the token, the ids and parameters (422), PostgreSQL (503).
_ANY_READ = (401, 403, 422, 503)


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


@router.get("/assessments/{assessment_id}", response_model=AssessmentOut, responses=problems(*_ANY_READ, 404))
async def get(assessment_id: str, store: StoreDep) -> AssessmentOut:
    """Current state from the projection."""
    return AssessmentOut.of(await store.get_state(assessment_id))


@router.get("/assessments", response_model=PageOut,
            responses=problems(*_ANY_READ, why={422: "A bad state, limit or cursor (only nextCursor values are "
                                                     "cursors); `errors` names the parameter"}))
async def list_(
    store: StoreDep,
    state: Annotated[State | None, Query(description="Only this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="nextCursor of the previous page.")] = None,
) -> PageOut:
    """Assessments ordered by id, a page at a time."""
    items = await store.list_assessments(state=state, after=_uncursor(cursor) if cursor is not None else None,
                                         limit=limit)
    nxt = _cursor(items[-1].assessment_id) if len(items) == limit else None
    return PageOut(items=[AssessmentOut.of(a) for a in items], next_cursor=nxt)


@router.get("/assessments/{assessment_id}/events", responses=problems(*_ANY_READ, 404))
async def events(assessment_id: str, store: StoreDep) -> list[dict[str, Any]]:
    """The assessment's event history: version, type, when, source, payload, Kafka position."""
    await store.get_state(assessment_id)  # 404 for an unknown id rather than an empty list
    return await store.get_history(assessment_id)


@router.get("/assessments/{assessment_id}/wait", response_model=AssessmentOut,
            responses=problems(*_ANY_READ, 404, 408, why={
                408: "Not COMPLETED, FAILED or CANCELLED within the timeout (capped by "
                     "ASSESSMENT_STORE_API_MAX_WAIT_S); ask again"}))
async def wait(
    assessment_id: str,
    store: StoreDep,
    settings: SettingsDep,
    timeout: Annotated[float, Query(gt=0, allow_inf_nan=False, description="Seconds; 408 when it passes.")] = 30.0,
) -> AssessmentOut:
    """Long poll: answers as soon as the assessment is COMPLETED, FAILED or CANCELLED."""
    await store.get_state(assessment_id)
    return AssessmentOut.of(await store.wait_for_completion(assessment_id, min(timeout, settings.api_max_wait_s)))


@router.get("/commands/{command_id}", response_model=OutcomeOut,
            responses=problems(*_ANY_READ, 404, why={404: "No outcome for this command (yet): unknown, or not "
                                                          "processed and projected so far"}))
async def outcome(command_id: str, store: StoreDep) -> OutcomeOut | JSONResponse:
    """What became of a command."""
    found = await store.get_outcome(command_id)
    if found is None:
        return problem(404, "Command not found", f"no outcome for command {command_id!r} (yet)",
                       commandId=command_id)
    return OutcomeOut.of(found)
