"""Request and response bodies of the HTTP API (camelCase JSON, validated by pydantic).

Input types are strict (``"50"`` is not a progress, ``true`` not a number) and bounded by the Avro
type that carries each field (``max_retries`` an Avro int, the other integers Avro longs), so an
out-of-range value is a 422 naming the field, never an encoding failure later. Strings refuse NUL
and lone surrogates (PostgreSQL cannot store the first, UTF-8 cannot encode the second); request and
result documents are checked by the store's own ``validate_command`` (same rules, a path per value).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from pydantic.alias_generators import to_camel

from assessment_store.core import (
    INT32_MAX,
    INT64_MAX,
    MAX_ID_LENGTH,
    MAX_TEXT_LENGTH,
    Assessment,
    Outcome,
    ValidationError,
    check_text,
)

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


def _storable(value: str) -> str:
    try:
        check_text("value", value)
    except ValidationError as e:
        raise ValueError(e.reason) from None
    return value


Text = Annotated[StrictStr, AfterValidator(_storable)]
Long = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]


class _Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class CommandIn(_Body):
    command_id: Text | None = Field(
        default=None, min_length=1, max_length=MAX_ID_LENGTH,
        description="Idempotency key: re-sending it returns the original outcome. Generated when absent.",
    )
    expected_version: Long | None = Field(default=None, description="Refuse (409) unless at this version.")


class CreateIn(CommandIn):
    request: Any = Field(description="The assessment request, any JSON value (at most 64 levels deep, integers "
                                     "within 64 bits, no NUL character).")
    assessment_id: Text | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)
    processing_timeout_ms: Long | None = Field(default=None, ge=1, description="Deadline of PROCESSING.")
    max_retries: Annotated[StrictInt, Field(ge=0, le=INT32_MAX)] | None = None


class StartIn(CommandIn):
    worker: Text | None = Field(default=None, max_length=MAX_TEXT_LENGTH)


class ProgressIn(CommandIn):
    progress: StrictInt = Field(ge=0, le=100)
    message: Text | None = Field(default=None, max_length=MAX_TEXT_LENGTH)


class CompleteIn(CommandIn):
    result: Any = None
    duration_ms: Long | None = None


class FailIn(CommandIn):
    error: Text = Field(min_length=1, max_length=MAX_TEXT_LENGTH)
    retryable: StrictBool = False
    duration_ms: Long | None = None


class CancelIn(CommandIn):
    reason: Text | None = Field(default=None, max_length=MAX_TEXT_LENGTH)


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
