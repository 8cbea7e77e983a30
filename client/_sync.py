"""``SyncAssessmentStore``: the client for code that is not async.

It runs an ``AssessmentStore`` on an event loop in a private thread and blocks on each call.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from assessment_store.core import JSON, Assessment, Outcome, Settings, State
from ._position import Position
from ._store import AssessmentStore
from ._subscription import EventRecord, Subscription

__all__ = ["SyncAssessmentStore", "SyncSubscription"]

T = TypeVar("T")


class SyncSubscription:
    """A ``Subscription`` for blocking code: ``with store.subscribe(...) as sub: for rec in sub: ...``.
    It runs on the ``SyncAssessmentStore``'s loop; ``get(timeout_s)`` waits for one event at most
    that long (None when none came)."""

    def __init__(self, sub: Subscription, call: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self.subscription = sub
        self._call = call

    @property
    def position(self) -> Position:
        return self.subscription.position

    @property
    def caught_up(self) -> bool:
        return self.subscription.caught_up

    def get(self, timeout_s: float | None = None) -> EventRecord | None:
        async def one() -> EventRecord | None:
            try:
                async with asyncio.timeout(timeout_s):
                    return await self.subscription.__anext__()
            except TimeoutError:
                return None
        try:
            got: EventRecord | None = self._call(one())
        except StopAsyncIteration:
            raise StopIteration from None
        return got

    def __iter__(self) -> SyncSubscription:
        return self

    def __next__(self) -> EventRecord:
        got = self.get()
        assert got is not None  # no timeout: only the end of the subscription stops the wait
        return got

    def close(self) -> None:
        self._call(self.subscription.aclose())

    def __enter__(self) -> SyncSubscription:
        self._call(self.subscription.start())
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class SyncAssessmentStore:
    """``with SyncAssessmentStore() as store: store.create_assessment({...})``"""

    def __init__(self, settings: Settings | None = None) -> None:
        self._store = AssessmentStore(settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def settings(self) -> Settings:
        return self._store.settings

    def start(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="assessment-store-sync", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._call(self._store.start())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._store.stop(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> SyncAssessmentStore:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("SyncAssessmentStore is not started: use `with SyncAssessmentStore() as store`")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def create_assessment(self, request: JSON, **kw: Any) -> str:
        return self._call(self._store.create_assessment(request, **kw))

    def start_assessment(self, assessment_id: str, **kw: Any) -> Assessment:
        return self._call(self._store.start_assessment(assessment_id, **kw))

    def update_progress(self, assessment_id: str, progress: int, message: str | None = None, **kw: Any) -> Assessment:
        return self._call(self._store.update_progress(assessment_id, progress, message, **kw))

    def complete_assessment(self, assessment_id: str, result: JSON, **kw: Any) -> Assessment:
        return self._call(self._store.complete_assessment(assessment_id, result, **kw))

    def fail_assessment(self, assessment_id: str, error: str, **kw: Any) -> Assessment:
        return self._call(self._store.fail_assessment(assessment_id, error, **kw))

    def cancel_assessment(self, assessment_id: str, reason: str | None = None, **kw: Any) -> Assessment:
        return self._call(self._store.cancel_assessment(assessment_id, reason, **kw))

    def retry_assessment(self, assessment_id: str, **kw: Any) -> Assessment:
        return self._call(self._store.retry_assessment(assessment_id, **kw))

    def get_state(self, assessment_id: str) -> Assessment:
        return self._call(self._store.get_state(assessment_id))

    def find_state(self, assessment_id: str) -> Assessment | None:
        return self._call(self._store.find_state(assessment_id))

    def wait_for_completion(self, assessment_id: str, timeout: float = 30.0) -> Assessment:
        return self._call(self._store.wait_for_completion(assessment_id, timeout))

    def get_assessment_count(self, state: State | None = None) -> int:
        return self._call(self._store.get_assessment_count(state))

    def get_all_assessment_ids(self, state: State | None = None) -> list[str]:
        return self._call(self._store.get_all_assessment_ids(state))

    def get_history(self, assessment_id: str) -> list[dict[str, JSON]]:
        return self._call(self._store.get_history(assessment_id))

    def get_outcome(self, command_id: str) -> Outcome | None:
        return self._call(self._store.get_outcome(command_id))

    def subscribe(self, **kw: Any) -> SyncSubscription:
        """``AssessmentStore.subscribe`` for blocking code (same keywords)."""
        if self._loop is None:
            raise RuntimeError("SyncAssessmentStore is not started: use `with SyncAssessmentStore() as store`")
        return SyncSubscription(self._store.subscribe(**kw), self._call)
