"""The processor's idempotency chunks: orjson writes the document json writes, and json decides
where the two would differ."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from assessment_store.core import Outcome, new_id
from assessment_store.streams._snapshot import decode_chunk, encode_chunk, row_outcome  # the record format under test

T = datetime(2026, 12, 4, 8, 26, 12, 863298, tzinfo=UTC)


def _json_chunk(outcomes: list[Outcome]) -> bytes:
    """The chunk as json alone writes it (the format's reference)."""
    rows = []
    for o in outcomes:
        row = [o.command_id, o.assessment_id, o.command_offset, o.processed_at.isoformat(), o.accepted]
        row += [o.version, o.event_id] if o.accepted else [o.error_type, o.error_message, o.error_details]
        rows.append(row)
    return json.dumps({"v": 1, "o": rows}, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _outcomes() -> list[Outcome]:
    times = [T, T.replace(microsecond=0), T + timedelta(days=400), T.astimezone(timezone(timedelta(hours=5, minutes=30)))]
    accepted = [Outcome(command_id=f"c-{i}-é\u2028\"\\", assessment_id=f"a-{i}", accepted=True, processed_at=times[i % 4],
                        command_offset=2**62 + i, version=i + 1, event_id=new_id()) for i in range(8)]
    rejected = [Outcome(command_id="r-1", assessment_id="a-1", accepted=False, processed_at=T, command_offset=3,
                        error_type="VersionConflict", error_message="expected 3, at 4 \U0001F600",
                        error_details={"expected": 3, "actual": 4, "nested": [None, True, "x"]}),
                Outcome(command_id="r-2", assessment_id="a-2", accepted=False, processed_at=T, command_offset=4,
                        error_type="ValidationError", error_message=None, error_details=None)]
    return accepted + rejected


def test_chunks_are_written_as_json_writes_them() -> None:
    """Accepted and rejected rows, odd text, far offsets and times in other zones: the same bytes as json's."""
    outcomes = _outcomes()
    assert encode_chunk(outcomes) == _json_chunk(outcomes)
    assert [row_outcome(r) for r in decode_chunk(encode_chunk(outcomes))] == outcomes


def test_what_orjson_cannot_write_goes_through_json() -> None:
    """An integer beyond 64 bits and a non-string key in error details: json writes the chunk, as before."""
    odd = Outcome(command_id="r-3", assessment_id="a-3", accepted=False, processed_at=T, command_offset=5,
                  error_type="ValidationError", error_message="big", error_details={"value": 2**70, 7: "seven"})  # type: ignore[dict-item]
    outcomes = [*_outcomes(), odd]
    assert encode_chunk(outcomes) == _json_chunk(outcomes)


def test_a_non_finite_number_in_error_details_is_refused_as_json_refuses_it() -> None:
    """NaN in error details raises json's ValueError (orjson would have written null)."""
    bad = Outcome(command_id="r-4", assessment_id="a-4", accepted=False, processed_at=T, command_offset=6,
                  error_type="ValidationError", error_message="nan", error_details={"value": float("nan")})
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode_chunk([bad])
