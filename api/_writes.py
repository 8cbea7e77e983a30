"""The write routes: create an assessment and move it through its lifecycle. Each sends a command
to the assessment's single writer and answers with the state once the projection shows its event."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from assessment_store.client import AssessmentStore
from assessment_store.core import (
    Cancel,
    Command,
    Complete,
    Create,
    Fail,
    Retry,
    Start,
    UpdateProgress,
    new_id,
)

from ._auth import require_writer
from ._models import AssessmentOut, CancelIn, CommandIn, CompleteIn, CreateIn, FailIn, ProgressIn, StartIn
from ._openapi import problems
from ._state import StoreDep

__all__ = ["router"]

router = APIRouter(tags=["write"], dependencies=[Depends(require_writer)])

# Every write: the token, the body (its size, its fields), the command's fate in Kafka and the projection.
_ANY_WRITE = (400, 401, 403, 408, 409, 413, 422, 503, 504)
_CREATE = problems(*_ANY_WRITE, why={409: "An assessment with this assessmentId already exists, or expectedVersion is not 0"})
_TRANSITION = problems(*_ANY_WRITE, 404)


async def _run(store: AssessmentStore, command: Command, body: CommandIn) -> AssessmentOut:
    return AssessmentOut.of(await store.execute(command, fresh_id=body.command_id is None))


def _ids(assessment_id: str, body: CommandIn) -> dict[str, Any]:
    return {"assessment_id": assessment_id,
            "command_id": body.command_id if body.command_id is not None else new_id(),
            "expected_version": body.expected_version}


@router.post("/assessments", status_code=201, response_model=AssessmentOut, responses=_CREATE)
async def create(body: CreateIn, store: StoreDep) -> AssessmentOut:
    """Create a PENDING assessment."""
    return await _run(store, Create(request=body.request, processing_timeout_ms=body.processing_timeout_ms,
                                    max_retries=body.max_retries,
                                    **_ids(body.assessment_id if body.assessment_id is not None else new_id(), body)),
                      body)


@router.post("/assessments/{assessment_id}/start", response_model=AssessmentOut, responses=_TRANSITION)
async def start(assessment_id: str, body: StartIn, store: StoreDep) -> AssessmentOut:
    """PENDING -> PROCESSING."""
    return await _run(store, Start(worker=body.worker, **_ids(assessment_id, body)), body)


@router.post("/assessments/{assessment_id}/progress", response_model=AssessmentOut, responses=_TRANSITION)
async def progress(assessment_id: str, body: ProgressIn, store: StoreDep) -> AssessmentOut:
    """Record progress 0-100 while PENDING or PROCESSING."""
    return await _run(store, UpdateProgress(progress=body.progress, message=body.message, **_ids(assessment_id, body)),
                      body)


@router.post("/assessments/{assessment_id}/complete", response_model=AssessmentOut, responses=_TRANSITION)
async def complete(assessment_id: str, body: CompleteIn, store: StoreDep) -> AssessmentOut:
    """PROCESSING -> COMPLETED."""
    return await _run(store, Complete(result=body.result, duration_ms=body.duration_ms, **_ids(assessment_id, body)),
                      body)


@router.post("/assessments/{assessment_id}/fail", response_model=AssessmentOut, responses=_TRANSITION)
async def fail(assessment_id: str, body: FailIn, store: StoreDep) -> AssessmentOut:
    """PENDING or PROCESSING -> FAILED."""
    return await _run(store, Fail(error=body.error, retryable=body.retryable, duration_ms=body.duration_ms,
                                  **_ids(assessment_id, body)), body)


@router.post("/assessments/{assessment_id}/cancel", response_model=AssessmentOut, responses=_TRANSITION)
async def cancel(assessment_id: str, body: CancelIn, store: StoreDep) -> AssessmentOut:
    """PENDING or PROCESSING -> CANCELLED."""
    return await _run(store, Cancel(reason=body.reason, **_ids(assessment_id, body)), body)


@router.post("/assessments/{assessment_id}/retry", response_model=AssessmentOut, responses=_TRANSITION)
async def retry(assessment_id: str, body: CommandIn, store: StoreDep) -> AssessmentOut:
    """FAILED -> PENDING, retry count + 1."""
    return await _run(store, Retry(**_ids(assessment_id, body)), body)
