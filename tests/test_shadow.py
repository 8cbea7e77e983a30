"""Shadow comparison's pure verdicts (``bridge.compare``): where the other side stands against the answer."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from assessment_store import State
from assessment_store.core import Assessment
from assessment_store.migration import COMPARED_FIELDS, Verdict, compare

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _a(state: State, progress: int = 0, **kw: object) -> Assessment:
    return dataclasses.replace(Assessment("a-1", state, 1, progress, None, T0, T0, {"n": 1}), **kw)  # type: ignore[arg-type]


def test_equal_compared_fields_match_whatever_else_differs() -> None:
    """Version, timestamps and message are not compared: two sides count versions differently."""
    primary = _a(State.COMPLETED, 100, result_data={"s": 1}, duration=5)
    shadow = dataclasses.replace(primary, version=9, message="other", updated_at=datetime.now(UTC))
    assert compare(primary, shadow) == (Verdict.MATCHED, ())
    assert COMPARED_FIELDS == ("state", "progress", "result", "duration", "error")


@pytest.mark.parametrize(("primary", "shadow", "verdict"), [
    (_a(State.PROCESSING), None, Verdict.BEHIND),
    (_a(State.PROCESSING), _a(State.PENDING), Verdict.BEHIND),
    (_a(State.PROCESSING, 60), _a(State.PROCESSING, 30), Verdict.BEHIND),
    (_a(State.PROCESSING, 30), _a(State.PROCESSING, 60), Verdict.AHEAD),
    (_a(State.PENDING), _a(State.COMPLETED, 100), Verdict.AHEAD),
    (_a(State.COMPLETED, 100), _a(State.PROCESSING, 50), Verdict.BEHIND),
    (_a(State.COMPLETED, 100), _a(State.FAILED, 50, error_message="x"), Verdict.MISMATCH),
    (_a(State.FAILED, error_message="a", duration=5), _a(State.FAILED, error_message="a", duration=7), Verdict.MISMATCH),
])
def test_verdicts(primary: Assessment, shadow: Assessment | None, verdict: Verdict) -> None:
    """Behind -> read again; ahead -> inconclusive; same step or both finished but different -> mismatch."""
    assert compare(primary, shadow)[0] is verdict


def test_a_finished_answer_is_never_inconclusive() -> None:
    """Against a finished answer the shadow is behind, equal or different, never ahead: terminal steps are always compared."""
    for end in (State.COMPLETED, State.FAILED, State.CANCELLED):
        for other in State:
            for progress in (0, 50, 100):
                assert compare(_a(end, 100), _a(other, progress))[0] is not Verdict.AHEAD


def test_mismatch_names_every_differing_field() -> None:
    """The differences are the compared fields that differ, in a fixed order."""
    verdict, diff = compare(_a(State.COMPLETED, 100, result_data={"s": 1}, duration=5),
                            _a(State.COMPLETED, 100, result_data={"s": 2}, duration=6))
    assert (verdict, diff) == (Verdict.MISMATCH, ("result", "duration"))


def test_sampling_zero_schedules_nothing_and_counts_it() -> None:
    """With sample_percentage=0 no observation is scheduled, and every skipped call is counted."""
    from assessment_store.migration import ShadowObserver

    class Sink:
        async def record(self, mismatch: object) -> None:
            raise AssertionError("nothing to record")

    observer = ShadowObserver(Sink(), sample_percentage=0)
    for _ in range(3):
        observer.observe("get", "a-1", "store", "legacy", _a(State.PENDING), 1.0, lambda: None)  # type: ignore[arg-type,return-value]
    assert (observer.stats.scheduled, observer.stats.skipped_sampling, observer.stats.in_flight) == (0, 3, 0)
    with pytest.raises(ValueError):
        ShadowObserver(Sink(), sample_percentage=101)
