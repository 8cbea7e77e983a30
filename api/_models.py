"""Request and response bodies of the HTTP API (camelCase JSON, validated by pydantic)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from assessment_store._domain import MAX_ID_LENGTH, MAX_TEXT_LENGTH
from assessment_store._model import Assessment, Outcome

__all__ = [
    "AssessmentOut",
    "CancelIn",
    "CommandIn",
    "CompleteIn",
    "CreateIn",
    "FailIn",
    "OutcomeOut",
    "PageOut",
    "ProgressIn",
    "StartIn",
]


class _Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class CommandIn(_Body):
    command_id: str | None = Field(
        default=None, min_length=1, max_length=MAX_ID_LENGTH,
        description="Idempotency key: re-sending it returns the original outcome. Generated when absent.",
    )
    expected_version: int | None = Field(default=None, ge=0, description="Refuse (409) unless at this version.")


class CreateIn(CommandIn):
    request: Any = Field(description="The assessment request, any JSON value.")
    assessment_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)
    processing_timeout_ms: int | None = Field(default=None, ge=1, description="Deadline of PROCESSING.")
    max_retries: int | None = Field(default=None, ge=0)


class StartIn(CommandIn):
    worker: str | None = Field(default=None, max_length=MAX_TEXT_LENGTH)


class ProgressIn(CommandIn):
    progress: int = Field(ge=0, le=100)
    message: str | None = Field(default=None, max_length=MAX_TEXT_LENGTH)


class CompleteIn(CommandIn):
    result: Any = None
    duration_ms: int | None = Field(default=None, ge=0)


class FailIn(CommandIn):
    error: str = Field(min_length=1, max_length=MAX_TEXT_LENGTH)
    retryable: bool = False
    duration_ms: int | None = Field(default=None, ge=0)


class CancelIn(CommandIn):
    reason: str | None = Field(default=None, max_length=MAX_TEXT_LENGTH)


class AssessmentOut(_Body):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    assessment_id: str
    state: str
    version: int
    progress: int
    message: str | None
    created_at: str | None
    updated_at: str | None
    request_data: Any
    result_data: Any
    error_message: str | None
    retry_count: int
    duration: int | None
    started_at: str | None
    finished_at: str | None
    retryable: bool | None
    cancel_reason: str | None

    @classmethod
    def of(cls, a: Assessment) -> AssessmentOut:
        return cls.model_validate(a.to_json())


class PageOut(_Body):
    items: list[AssessmentOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class OutcomeOut(_Body):
    command_id: str
    assessment_id: str
    accepted: bool
    version: int | None
    event_id: str | None
    error_type: str | None
    error_message: str | None
    error_details: dict[str, Any] | None
    processed_at: str

    @classmethod
    def of(cls, o: Outcome) -> OutcomeOut:
        return cls(
            command_id=o.command_id, assessment_id=o.assessment_id, accepted=o.accepted, version=o.version,
            event_id=o.event_id, error_type=o.error_type, error_message=o.error_message,
            error_details=o.error_details, processed_at=o.processed_at.isoformat(),
        )
