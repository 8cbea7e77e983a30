"""The fast JSON reader (core.json_loads) gives json.loads's value, and the snapshot loader keeps integers exact."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from assessment_store.core import Assessment, State, exact_fast_loads, json_loads
from assessment_store.streams._snapshot import decode_state, encode_state  # the record format under test

DOCS = [
    b'{"a": 1, "b": [1.5, -0.0, null, true], "c": "\\u00e9\\u0000"}',
    b'{"big": 18446744073709551616, "neg": -9223372036854775809, "max": 18446744073709551615}',
    b'{"f": 0.1234567890123456789012, "e": 1e308, "tiny": 1.5e-400}',
    b'{"nan": NaN, "inf": Infinity}',
    b'{"a": 1, "a": 2}',
    b'"\\ud800"',
    b'1e400',
]


@pytest.mark.parametrize("raw", DOCS)
def test_reads_every_document_as_json_does(raw: bytes) -> None:
    """Each document, including those orjson alone would read differently or refuse, reads exactly as json.loads reads it."""
    got, want = json_loads()(raw), json.loads(raw)
    assert repr(got) == repr(want)  # repr: NaN != NaN, and 1 == 1.0 would hide a changed type


def test_fast_reader_refuses_long_digit_runs() -> None:
    """exact_fast_loads raises ValueError, rather than round an integer, for a document with 19 or more digits in a row."""
    fast = exact_fast_loads()
    if fast is None:
        pytest.skip("orjson is not installed (the client's base install)")
    assert fast(b'{"a": 123456789012345678}') == {"a": 123456789012345678}
    with pytest.raises(ValueError):
        fast(b'{"a": 18446744073709551616}')


def test_snapshot_state_keeps_integers_beyond_64_bits() -> None:
    """A snapshot record's request and result data come back with the same integers (type and value) they were written with."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    doc = {"big": 2**64, "neg": -(2**63) - 1, "small": 3}
    a = Assessment(assessment_id="x", state=State.COMPLETED, version=4, progress=100, message=None, created_at=at,
                   updated_at=at, request_data=doc, result_data={"r": 2**65})
    back = decode_state("x", encode_state(a))
    assert isinstance(back, Assessment)
    assert repr(back.request_data) == repr(doc) and repr(back.result_data) == repr({"r": 2**65})
