"""What may enter the log: no value PostgreSQL cannot store or a reader cannot decode (pure, no services)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assessment_store import ValidationError
from assessment_store.core import (
    INT32_MAX,
    INT64_MAX,
    MAX_JSON_DEPTH,
    Cancel,
    Command,
    CommandEnvelope,
    Complete,
    Create,
    Fail,
    Start,
    UpdateProgress,
    validate_command,
)
from assessment_store.schemas import CommandCodec

LIMIT = 1_000_000


def _refused(command: Command) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        validate_command(command, LIMIT)
    return info.value


def _nested(depth: int) -> Any:
    doc: Any = 1
    for _ in range(depth):
        doc = [doc]
    return doc


@pytest.mark.parametrize(("command", "field"), [
    (Fail(assessment_id="a", error="a\x00b"), "error"),
    (UpdateProgress(assessment_id="a", progress=1, message="x\x00"), "message"),
    (Cancel(assessment_id="a", reason="\x00"), "reason"),
    (Start(assessment_id="a", worker="w\x00"), "worker"),
    (Start(assessment_id="a\x00b"), "assessment_id"),
    (Start(assessment_id="a", command_id="c\x00"), "command_id"),
    (Start(assessment_id="a", correlation_id="c\x00"), "correlation_id"),
    (Create(assessment_id="a", request={"a": {"b": [0, 1, 2, "x\x00"]}}), "request.a.b[3]"),
    (Complete(assessment_id="a", result={"k\x00": 1}), "result"),
])
def test_nul_is_refused_in_every_string_naming_its_field(command: Command, field: str) -> None:
    """A NUL character anywhere in a command (fields, ids, nested JSON values and keys) is a ValidationError naming the path."""
    e = _refused(command)
    assert (e.field, "NUL" in e.reason) == (field, True)


@pytest.mark.parametrize(("command", "field"), [
    (Fail(assessment_id="a", error="a\ud800b"), "error"),
    (UpdateProgress(assessment_id="a", progress=1, message="\udfff"), "message"),
    (Create(assessment_id="a", request={"a": ["\ud83d"]}), "request.a[0]"),
    (Create(assessment_id="a", request={"\udc00": 1}), "request"),
    (Start(assessment_id="a\ud800"), "assessment_id"),
])
def test_lone_surrogates_are_refused_naming_their_field(command: Command, field: str) -> None:
    """A lone UTF-16 surrogate (not encodable as UTF-8) anywhere in a command is refused, naming the path."""
    e = _refused(command)
    assert (e.field, "surrogate" in e.reason) == (field, True)


@pytest.mark.parametrize(("command", "field"), [
    (Create(assessment_id="a", request=1, max_retries=INT32_MAX + 1), "max_retries"),
    (Create(assessment_id="a", request=1, processing_timeout_ms=INT64_MAX + 1), "processing_timeout_ms"),
    (Start(assessment_id="a", expected_version=INT64_MAX + 1), "expected_version"),
    (Complete(assessment_id="a", result=1, duration_ms=INT64_MAX + 1), "duration_ms"),
    (Fail(assessment_id="a", error="e", duration_ms=2**64), "duration_ms"),
    (Create(assessment_id="a", request={"n": [2**63]}), "request.n[0]"),
    (Create(assessment_id="a", request={"n": -(2**63) - 1}), "request.n"),
    (Complete(assessment_id="a", result={"x": float("nan")}), "result.x"),
    (Complete(assessment_id="a", result=[float("inf")]), "result[0]"),
    (Create(assessment_id="a", request={"s": {1, 2}}), "request.s"),
])
def test_numbers_outside_their_avro_and_postgres_types_are_refused(command: Command, field: str) -> None:
    """Integers beyond the field's Avro int/long, JSON integers beyond 64 bits and non-finite floats are refused by field."""
    assert _refused(command).field == field


def test_the_largest_values_of_each_type_are_accepted_and_encode() -> None:
    """The bounds themselves are accepted, and a command at the bounds encodes in Avro."""
    commands: list[Command] = [
        Create(assessment_id="a", request={"n": INT64_MAX, "m": -(2**63), "d": _nested(MAX_JSON_DEPTH - 1)},
               max_retries=INT32_MAX, processing_timeout_ms=INT64_MAX, expected_version=INT64_MAX),
        Complete(assessment_id="a", result=_nested(MAX_JSON_DEPTH), duration_ms=INT64_MAX),
        Fail(assessment_id="a", error="e", duration_ms=INT64_MAX),
    ]
    for c in commands:
        validate_command(c, LIMIT)
        CommandCodec().encode(CommandEnvelope(c, datetime.now(UTC)))


def test_nesting_deeper_than_the_limit_is_refused_iteratively() -> None:
    """One level past MAX_JSON_DEPTH is refused naming the field, and 100,000 levels fail the same way (no RecursionError)."""
    e = _refused(Create(assessment_id="a", request=_nested(MAX_JSON_DEPTH + 1)))
    assert e.field.startswith("request") and "deeper than 64" in e.reason
    e = _refused(Complete(assessment_id="a", result=_nested(100_000)))
    assert e.field.startswith("result") and "deeper" in e.reason
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    assert "deeper" in _refused(Create(assessment_id="a", request=cyclic)).reason


def test_an_empty_assessment_id_is_refused() -> None:
    """An empty or blank id is a ValidationError, never replaced by a generated one."""
    assert _refused(Create(assessment_id="", request=1)).field == "assessment_id"
    assert _refused(Create(assessment_id="  ", request=1)).field == "assessment_id"


_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=_json, message=st.text(max_size=20), duration=st.integers(min_value=-1, max_value=2**65))
def test_whatever_validation_accepts_encodes_and_postgres_can_store(request: Any, message: str, duration: int) -> None:
    """Property: a command validate_command accepts always encodes in Avro, and its JSON text holds no \\u0000
    (which jsonb refuses); anything else is a ValidationError, never another exception."""
    for c, document in ((Create(assessment_id="p", request=request), request),
                        (Complete(assessment_id="p", result=request, duration_ms=duration), request),
                        (UpdateProgress(assessment_id="p", progress=5, message=message), message)):
        try:
            validate_command(c, LIMIT)
        except ValidationError:
            continue
        value, _ = CommandCodec().encode(CommandEnvelope(c, datetime.now(UTC)))
        assert value
        text = json.dumps(document, ensure_ascii=False, allow_nan=False)
        # An escaped backslash followed by "u0000" is harmless text; a \u0000 escape is what jsonb refuses.
        assert "\\u0000" not in text.replace("\\\\", "") and "\x00" not in text
        text.encode("utf-8")
