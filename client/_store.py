"""``AssessmentStore``: the API services use to write and read assessments.

A write is a command sent to ``assessments.commands``; the command processor that owns the
assessment's partition (the single writer) accepts it with one event or rejects it, and the
projector folds both the event and the outcome into PostgreSQL. The client waits for the
outcome there, then for its event to be visible, so a caller (or the next CLI invocation)
always reads its own writes. The state an accepted command returns usually comes with its
notification (the stored row, sent in the transaction that stored it), so it costs no read.
Every command has a ``command_id``; sending one again returns the original outcome and appends
nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal
from weakref import WeakSet

import asyncpg

from assessment_store.projections import (
    ChangeListener,
    count_by_state as _count_by_state,
    create_pool,
    fetch_assessment,
    fetch_history as _fetch_history,
    fetch_outcome as _fetch_outcome,
    list_ids as _list_ids,
    list_page as _list_page,
    translate_db_errors,
)
from assessment_store.streams import CommandSender, ensure_topics, partition_counts

from assessment_store.core import (
    JSON,
    Assessment,
    AssessmentNotFound,
    AssessmentStoreError,
    AsyncLifecycle,
    Backoff,
    Cancel,
    Command,
    CommandEnvelope,
    Complete,
    Create,
    EventSource,
    EventType,
    Fail,
    Histogram,
    KafkaUnavailable,
    MetricFamily,
    Outcome,
    Retry,
    Settings,
    Start,
    State,
    UpdateProgress,
    ValidationError,
    check_text,
    counter,
    counter_by,
    error_from_rejection,
    histogram,
    metrics_registry,
    new_id,
    validate_command,
    validate_command_id,
    validate_id,
)

from ._position import Position
from ._subscription import Subscription

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = ["AssessmentStore", "ClientStats"]

log = logging.getLogger("assessment_store.client")


@dataclass
class ClientStats:
    """A client's commands since it was built, and how long they took (docs/monitoring.md, "Metrics")."""

    commands: int = 0
    """commands executed (sent, or found already answered)"""
    accepted: int = 0
    rejected_by_type: Counter[str] = field(default_factory=Counter)
    send_to_outcome: Histogram = field(default_factory=Histogram)
    """seconds from sending a command to its outcome in the projection"""
    send_to_visible: Histogram = field(default_factory=Histogram)
    """seconds from sending an accepted command to its event visible in the projection"""
    states_notified: int = 0
    """accepted commands answered with the state their notification carried (no read)"""
    states_read: int = 0
    """accepted commands whose state was read from the projection (too large for a notification,
    or the command was answered before this client sent it)"""

    def metric_families(self) -> list[MetricFamily]:
        p = "assessment_store_client_"
        return [
            counter(p + "commands_total", "Commands executed by this client", self.commands),
            counter(p + "commands_accepted_total", "Commands the processor accepted", self.accepted),
            counter_by(p + "commands_rejected_total", "Commands the processor rejected, by error type",
                       ["error_type"], self.rejected_by_type),
            histogram(p + "command_outcome_seconds", "Command sent to its outcome in the projection",
                      self.send_to_outcome),
            histogram(p + "command_visible_seconds", "Command sent to its event visible in the projection",
                      self.send_to_visible),
            counter_by(p + "states_total", "Accepted commands' states, by where they came from", ["source"],
                       Counter({"notification": self.states_notified, "read": self.states_read})),
        ]


def _ids(command_id: str | None) -> dict[str, str]:
    return {"command_id": command_id} if command_id is not None else {}


class AssessmentStore(AsyncLifecycle):
    """Async client of the store. ``async with AssessmentStore() as store: ...``"""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.stats = ClientStats()
        self._sender = CommandSender(self.settings)
        self._listener = ChangeListener(self.settings)
        self._pool: asyncpg.Pool | None = None
        self._topics_checked = False
        self._subscriptions: WeakSet[Subscription] = WeakSet()

    def metrics_registry(self) -> CollectorRegistry:
        """A Prometheus registry of this client's own (never the default one): serve it with
        ``start_metrics_server(store.metrics_registry(), port)``, or push it to a Pushgateway
        (docs/monitoring.md, "Metrics"). Needs ``prometheus-client`` (the ``server`` extra)."""
        return metrics_registry(self.stats)

    # --- lifecycle (idempotent) ----------------------------------------------------

    async def start(self) -> None:
        """Open PostgreSQL (every read, and every write's wait, goes there). Kafka is only needed
        by writes and is connected on the first one, so reads keep working while the broker is
        down and a client started during a broker outage still starts."""
        if self._pool is not None:
            return
        self._pool = await create_pool(self.settings, min_size=1, max_size=10)
        try:
            await self._listener.start()
        except BaseException:
            pool, self._pool = self._pool, None
            await pool.close()
            raise

    async def stop(self) -> None:
        for sub in list(self._subscriptions):
            await sub.aclose()
        await self._listener.stop()
        await self._sender.stop()
        self._topics_checked = False
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _send(self, envelope: CommandEnvelope) -> None:
        """Hand the command to Kafka, riding out a broker that is restarting or unreachable: the
        caller's deadline (``command_timeout_s``, see ``ChangeListener.wait_for_outcome``) is what
        ends the attempts, with a ``CommandTimeout`` naming the broker."""
        backoff = Backoff(log, initial_s=0.05, cap_s=1.0)
        while True:
            try:
                if not self._topics_checked:
                    await ensure_topics(self.settings, principal="client")
                    self._topics_checked = True
                # The listener's channel: the projector sends it the row this command changes.
                await self._sender.send(envelope, reply_to=self._listener.reply_channel)
                return
            except KafkaUnavailable as e:
                if not e.retriable:
                    raise
                await backoff.failed(f"command {envelope.command.command_id} not sent yet", e)

    # --- subscriptions ------------------------------------------------------------------

    def subscribe(
        self,
        *,
        from_position: Position | str | None = None,
        from_time: datetime | None = None,
        from_end: bool = False,
        types: Iterable[str | EventType] | None = None,
        assessment_ids: Iterable[str] | None = None,
        undecodable: Literal["skip", "raise"] = "skip",
        partition_check_s: float = 30.0,
    ) -> Subscription:
        """The events of the log, decoded, with their positions: from the beginning (default), a
        stored ``from_position`` (resumes exactly after it), the first record at or after
        ``from_time``, or the end (``from_end``); then live. ``types``: event type names to keep;
        ``assessment_ids``: only these assessments. Use as ``async with store.subscribe(...) as sub:
        async for rec in sub: ...``; see docs/subscriptions.md. Needs Kafka only (not ``start``);
        ``stop`` closes the subscriptions still open."""
        sub = Subscription(self.settings, from_position=from_position, from_time=from_time, from_end=from_end,
                           types=types, assessment_ids=assessment_ids, undecodable=undecodable,
                           partition_check_s=partition_check_s)
        self._subscriptions.add(sub)
        return sub

    # --- reads ------------------------------------------------------------------------

    @property
    def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("AssessmentStore is not started: use `async with AssessmentStore() as store`")
        return self._pool

    async def find_state(self, assessment_id: str) -> Assessment | None:
        """The assessment, or None when no such id exists."""
        validate_id(assessment_id)
        with translate_db_errors(f"reading assessment {assessment_id!r}"):
            return await fetch_assessment(self._db, assessment_id)

    async def get_state(self, assessment_id: str) -> Assessment:
        """The assessment; ``AssessmentNotFound`` when no such id exists."""
        found = await self.find_state(assessment_id)
        if found is None:
            raise AssessmentNotFound(assessment_id)
        return found

    async def get_assessment_count(self, state: State | None = None) -> int:
        counts = await self.count_by_state()
        return counts[state] if state is not None else sum(counts.values())

    async def readiness(self, timeout_s: float = 3.0) -> dict[str, str]:
        """``{"postgres": ..., "kafka": ...}``: "ok", or what failed. PostgreSQL answers a query and
        Kafka a metadata request for the events topic, each within ``timeout_s``. Never raises."""

        async def check(probe: Callable[[], Awaitable[object]]) -> str:
            try:
                async with asyncio.timeout(timeout_s):
                    await probe()
                return "ok"
            except TimeoutError:
                return f"no answer within {timeout_s:g} s"
            except AssessmentStoreError as e:
                return str(e)

        async def postgres() -> object:
            with translate_db_errors("checking readiness"):
                return await self._db.fetchval("SELECT 1")

        async def kafka() -> object:
            counts = await partition_counts(self.settings, [self.settings.events_topic], principal="client")
            if not counts.get(self.settings.events_topic):
                raise KafkaUnavailable(f"topic {self.settings.events_topic!r} does not exist")
            return counts

        pg, kf = await asyncio.gather(check(postgres), check(kafka))
        return {"postgres": pg, "kafka": kf}

    async def count_by_state(self) -> dict[State, int]:
        with translate_db_errors("counting assessments"):
            return await _count_by_state(self._db)

    async def get_all_assessment_ids(self, state: State | None = None) -> list[str]:
        with translate_db_errors("listing assessment ids"):
            return await _list_ids(self._db, state=state)

    async def list_assessments(
        self, *, state: State | None = None, after: str | None = None, limit: int = 100
    ) -> list[Assessment]:
        """A page of assessments ordered by id, after the id ``after`` (pass the last id of the
        previous page)."""
        if not 1 <= limit <= 1000:
            raise ValidationError("limit", "must be between 1 and 1000")
        if after is not None:
            # A NUL reaching PostgreSQL is an encoding error, which would read as an outage.
            check_text("after", after)
        with translate_db_errors("listing assessments"):
            page: list[Assessment] = await _list_page(self._db, state=state, after=after, limit=limit)
            return page

    async def get_history(self, assessment_id: str) -> list[dict[str, JSON]]:
        validate_id(assessment_id)
        with translate_db_errors(f"reading the history of {assessment_id!r}"):
            return await _fetch_history(self._db, assessment_id)

    async def wait_for_completion(self, assessment_id: str, timeout: float = 30.0) -> Assessment:
        """Wait until the assessment is COMPLETED, FAILED or CANCELLED, and return it.

        Returns at once if it already is. Raises ``WaitTimeout`` (naming the id and the
        timeout) when that does not happen within ``timeout`` seconds.
        """
        validate_id(assessment_id)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
                or timeout <= 0:
            raise ValidationError("timeout", "must be a positive, finite number of seconds")
        return await self._listener.wait_for(
            assessment_id, lambda _v, state: state.finished, self.find_state, timeout, "completion"
        )

    # --- writes -----------------------------------------------------------------------

    async def create_assessment(
        self,
        request: JSON,
        *,
        assessment_id: str | None = None,
        command_id: str | None = None,
        correlation_id: str | None = None,
        processing_timeout_ms: int | None = None,
        max_retries: int | None = None,
    ) -> str:
        """Create a PENDING assessment for ``request`` and return its id."""
        # `is None`, not `or`: an empty id is refused by validation, never silently replaced.
        cmd = Create(
            assessment_id=assessment_id if assessment_id is not None else new_id(),
            command_id=command_id if command_id is not None else new_id(),
            correlation_id=correlation_id,
            request=request,
            processing_timeout_ms=processing_timeout_ms,
            max_retries=max_retries,
        )
        return (await self.execute(cmd, fresh_id=command_id is None)).assessment_id

    async def start_assessment(self, assessment_id: str, *, worker: str | None = None,
                               expected_version: int | None = None, command_id: str | None = None) -> Assessment:
        """PENDING -> PROCESSING."""
        return await self.execute(Start(assessment_id=assessment_id, worker=worker, expected_version=expected_version,
                                        **_ids(command_id)), fresh_id=command_id is None)

    async def update_progress(self, assessment_id: str, progress: int, message: str | None = None, *,
                              expected_version: int | None = None, command_id: str | None = None) -> Assessment:
        """Progress 0-100 (with a message) while PENDING or PROCESSING."""
        return await self.execute(UpdateProgress(assessment_id=assessment_id, progress=progress, message=message,
                                                 expected_version=expected_version, **_ids(command_id)), fresh_id=command_id is None)

    async def complete_assessment(self, assessment_id: str, result: JSON, *, duration_ms: int | None = None,
                                  expected_version: int | None = None, command_id: str | None = None) -> Assessment:
        """PROCESSING -> COMPLETED; the duration defaults to the time since start."""
        return await self.execute(Complete(assessment_id=assessment_id, result=result, duration_ms=duration_ms,
                                           expected_version=expected_version, **_ids(command_id)), fresh_id=command_id is None)

    async def fail_assessment(self, assessment_id: str, error: str, *, retryable: bool = False,
                              duration_ms: int | None = None, expected_version: int | None = None,
                              command_id: str | None = None) -> Assessment:
        """PENDING or PROCESSING -> FAILED (``duration_ms``: measured elsewhere; default: since the start)."""
        return await self.execute(Fail(assessment_id=assessment_id, error=error, retryable=retryable,
                                       duration_ms=duration_ms, expected_version=expected_version,
                                       **_ids(command_id)), fresh_id=command_id is None)

    async def cancel_assessment(self, assessment_id: str, reason: str | None = None, *,
                                expected_version: int | None = None, command_id: str | None = None) -> Assessment:
        """PENDING or PROCESSING -> CANCELLED."""
        return await self.execute(Cancel(assessment_id=assessment_id, reason=reason,
                                         expected_version=expected_version, **_ids(command_id)), fresh_id=command_id is None)

    async def retry_assessment(self, assessment_id: str, *, expected_version: int | None = None,
                               command_id: str | None = None) -> Assessment:
        """FAILED -> PENDING with retry_count + 1, up to the assessment's (or the default) limit."""
        return await self.execute(Retry(assessment_id=assessment_id, expected_version=expected_version,
                                        **_ids(command_id)), fresh_id=command_id is None)

    async def get_outcome(self, command_id: str) -> Outcome | None:
        """What became of a command, once the projection has folded its outcome."""
        validate_command_id(command_id)
        with translate_db_errors(f"reading the outcome of command {command_id!r}"):
            found: Outcome | None = await _fetch_outcome(self._db, command_id)
            return found

    async def execute(
        self, command: Command, *, source: EventSource = EventSource.STORE, fresh_id: bool = False
    ) -> Assessment:
        """Send ``command`` to its single writer, and return the state once the projection shows
        its event. A rejection raises the typed error the processor reported.

        ``fresh_id=True`` promises the command id was just generated (never sent before), which
        saves the look-up of an earlier outcome.
        """
        validate_command(command, self.settings.max_request_bytes)  # fail fast, before any I/O
        envelope = CommandEnvelope(command, datetime.now(UTC), source)

        async def send() -> None:
            await self._send(envelope)

        stats = self.stats
        sent = time.perf_counter()
        accepted, version, row, notified = await self._listener.wait_for_outcome(
            command.command_id, command.assessment_id, self.get_outcome, self.settings.command_timeout_s, send,
            may_exist=not fresh_id,
        )
        stats.commands += 1
        stats.send_to_outcome.observe(time.perf_counter() - sent)
        if not accepted:
            stats.rejected_by_type[(row.error_type if row is not None else None) or "unknown"] += 1
        else:
            stats.accepted += 1
        used_for = row.assessment_id if row is not None else notified.assessment_id if notified is not None else None
        if used_for is not None and used_for != command.assessment_id:
            raise ValidationError("command_id", f"{command.command_id!r} was already used for assessment {used_for!r}")
        if not accepted:
            assert row is not None
            raise error_from_rejection(row.error_type or "", row.error_message or "rejected", row.error_details or {})
        assert version is not None
        if notified is not None and notified.version >= version:
            # The stored row, sent in the transaction that stored the event: what a read returns.
            stats.states_notified += 1
            stats.send_to_visible.observe(time.perf_counter() - sent)
            return notified
        stats.states_read += 1
        state = await self._listener.wait_for(
            command.assessment_id,
            lambda v, _s: v >= version,
            self.find_state,
            self.settings.visibility_timeout_s,
            f"projection of version {version} (is the projector running?)",
        )
        stats.send_to_visible.observe(time.perf_counter() - sent)
        return state
