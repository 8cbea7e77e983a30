"""The legacy state machine, derived from the store's: which (status before, status after) pairs a legacy
audit log may show. Not written down a second time: every command the store knows is tried in every state
(``decide``), the accepted ones folded (``evolve``), and the states mapped to legacy statuses through the
bridge's mapping (``LEGACY_STATES``). A change to the store's rules changes what the check accepts."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache

from assessment_store.bridge import LEGACY_STATES
from assessment_store.core import (
    Assessment,
    Cancel,
    Command,
    Complete,
    Create,
    Fail,
    Retry,
    Start,
    State,
    StoreUsageError,
    UpdateProgress,
    decide,
    evolve,
)

__all__ = ["legacy_transitions"]

_AT = datetime(2000, 1, 1, tzinfo=UTC)


@cache
def legacy_transitions() -> frozenset[tuple[str | None, str]]:
    """Every allowed (before, after) pair of legacy statuses; before None is a creation. A progress update
    is the pair (s, s) of a state that accepts one."""
    legacy_of = {state: status for status, state in LEGACY_STATES.items()}
    pairs: set[tuple[str | None, str]] = set()
    created = evolve(None, decide(None, Create(assessment_id="x", request=None), _AT))
    pairs.add((None, legacy_of[created.state]))
    commands: tuple[Command, ...] = (
        Start(assessment_id="x"), UpdateProgress(assessment_id="x", progress=1), Complete(assessment_id="x", result=None),
        Fail(assessment_id="x", error="e"), Cancel(assessment_id="x"), Retry(assessment_id="x"),
    )
    for state in State:
        current = Assessment(assessment_id="x", state=state, version=1, progress=0, message=None, created_at=_AT,
                             updated_at=_AT, request_data=None, started_at=_AT if state is State.PROCESSING else None)
        for command in commands:
            try:
                event = decide(current, command, _AT)
            except StoreUsageError:
                continue
            pairs.add((legacy_of[state], legacy_of[evolve(current, event).state]))
    return frozenset(pairs)
