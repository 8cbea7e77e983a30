"""The state machine's legal (state, transition) pairs and where each leads: one table, read by the
pure test of ``decide`` and by the test against the real services."""

from assessment_store import State

TRANSITION_NAMES = ("start", "update_progress", "complete", "fail", "cancel", "retry")

LEGAL: dict[tuple[State, str], State] = {
    (State.PENDING, "start"): State.PROCESSING,
    (State.PENDING, "update_progress"): State.PENDING,
    (State.PENDING, "fail"): State.FAILED,
    (State.PENDING, "cancel"): State.CANCELLED,
    (State.PROCESSING, "update_progress"): State.PROCESSING,
    (State.PROCESSING, "complete"): State.COMPLETED,
    (State.PROCESSING, "fail"): State.FAILED,
    (State.PROCESSING, "cancel"): State.CANCELLED,
    (State.FAILED, "retry"): State.PENDING,
}
