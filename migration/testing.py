"""Test helpers of the legacy bridge and dual mode, shipped for the tests of services that use them.

``InMemoryLegacyBackend`` stands in for the legacy service behind ``MigrationRouter`` in tests of
routing logic (which side is called, fallback, counting). It is not the legacy system and proves
nothing about it: tests of the real legacy service go through the Node sample service
(``HttpLegacyBackend``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from datetime import UTC, datetime

from assessment_store.core import JSON, Assessment, AssessmentNotFound, InvalidTransition, State, WaitTimeout

__all__ = ["InMemoryLegacyBackend"]


class InMemoryLegacyBackend:
    """TEST DOUBLE ONLY: a dict standing in for the legacy service, to test the router's routing
    logic (which side is called, fallback, counting). It is not the legacy system and proves nothing
    about it; tests of the real legacy service go through the Node sample service and its tap.

    Transitions follow the legacy service's rules (pending -> processing -> completed | failed);
    an illegal one raises ``InvalidTransition`` as an adapter of the real service would.
    """

    def __init__(self) -> None:
        self.assessments: dict[str, Assessment] = {}
        self.calls: Counter[str] = Counter()
        self.synced: dict[str, int] = {}
        """What ``synced_version`` answers per id (tests set it; nothing syncs into this double)."""
        self._changed = asyncio.Condition()

    async def _put(self, state: Assessment) -> Assessment:
        async with self._changed:
            self.assessments[state.assessment_id] = state
            self._changed.notify_all()
        return state

    def _get(self, assessment_id: str) -> Assessment:
        found = self.assessments.get(assessment_id)
        if found is None:
            raise AssessmentNotFound(assessment_id)
        return found

    async def _move(self, assessment_id: str, action: str, allowed: tuple[str, ...], **changes: object) -> Assessment:
        self.calls[action] += 1
        current = self._get(assessment_id)
        if current.state.value not in allowed:
            raise InvalidTransition(assessment_id, current.state.value, action)
        return await self._put(dataclasses.replace(
            current, version=current.version + 1, updated_at=datetime.now(UTC), **changes))  # type: ignore[arg-type]

    async def create_assessment(self, request: JSON, *, assessment_id: str) -> str:
        self.calls["create"] += 1
        existing = self.assessments.get(assessment_id)
        if existing is not None:
            # As the legacy service answers (409): an id is created once (found by the contract suite).
            raise InvalidTransition(assessment_id, existing.state.value, "create")
        now = datetime.now(UTC)
        await self._put(Assessment(assessment_id, State.PENDING, 1, 0, None, now, now, request))
        return assessment_id

    async def start_assessment(self, assessment_id: str) -> Assessment:
        return await self._move(assessment_id, "start", ("PENDING",), state=State.PROCESSING)

    async def update_progress(self, assessment_id: str, progress: int, message: str | None = None) -> Assessment:
        return await self._move(assessment_id, "progress", ("PENDING", "PROCESSING"), progress=progress,
                                message=message)

    async def complete_assessment(self, assessment_id: str, result: JSON, *,
                                  duration_ms: int | None = None) -> Assessment:
        return await self._move(assessment_id, "complete", ("PROCESSING",), state=State.COMPLETED, progress=100,
                                result_data=result, duration=duration_ms)

    async def fail_assessment(self, assessment_id: str, error: str) -> Assessment:
        return await self._move(assessment_id, "fail", ("PENDING", "PROCESSING"), state=State.FAILED,
                                error_message=error)

    async def cancel_assessment(self, assessment_id: str) -> Assessment:
        return await self._move(assessment_id, "cancel", ("PENDING", "PROCESSING"), state=State.CANCELLED)

    async def get_state(self, assessment_id: str) -> Assessment:
        self.calls["get"] += 1
        return self._get(assessment_id)

    async def find_state(self, assessment_id: str) -> Assessment | None:
        return self.assessments.get(assessment_id)

    async def synced_version(self, assessment_id: str) -> int:
        self.calls["synced_version"] += 1
        return self.synced.get(assessment_id, 0)

    async def wait_for_completion(self, assessment_id: str, timeout: float = 30.0) -> Assessment:
        self.calls["wait"] += 1
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._get(assessment_id).state.finished), timeout)
            except TimeoutError:
                raise WaitTimeout(assessment_id, timeout) from None
        return self._get(assessment_id)
