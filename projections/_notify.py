"""Waiting for the projection to reach a condition, woken by LISTEN/NOTIFY.

Race-freedom rests on one ordering: a waiter is registered (and the LISTEN is active) *before*
the projection is read. A change committed after the read is then always delivered as a
notification to the registered waiter; a change committed before the read is seen by the
read. There is no window in between.

Any number of waiters in one process share one LISTEN connection.

A command's waiter is answered by whichever of its notifications comes first: the stored row of
its assessment, on this listener's own reply channel (``reply_channel``, which the client names in
the command's ``reply-to`` header; sent for an accepted command whose row fits in a notification),
or its outcome. The projector sends the row first, in the same transaction, so an accepted command
is answered with its state and needs no read (``wait_for_outcome``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from assessment_store.core import (
    Assessment,
    CommandTimeout,
    DatabaseUnavailable,
    Outcome,
    Settings,
    State,
    WaitTimeout,
)
from assessment_store.streams import REPLY_CHANNEL_PREFIX

from ._db import connect, translate_db_errors
from ._projector import CHANGES_CHANNEL, OUTCOMES_CHANNEL
from ._queries import assessment_from_json

__all__ = ["ChangeListener", "Change"]

log = logging.getLogger("assessment_store.listener")


@dataclass(frozen=True, slots=True)
class Change:
    assessment_id: str
    version: int
    state: State


_Answer = tuple[bool, int | None, Assessment | None]
"""accepted, the version of the command's event, and the state when a notification carried it"""


@dataclass(eq=False)
class _Waiter:
    predicate: Callable[[int, State], bool]
    future: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ChangeListener:
    """One LISTEN connection; wakes waiters whose predicate a notification satisfies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: asyncpg.Connection | None = None
        self._waiters: dict[str, set[_Waiter]] = {}
        self._outcome_waiters: dict[str, set[asyncio.Future[_Answer]]] = {}
        self._lock = asyncio.Lock()
        self.reply_channel = REPLY_CHANNEL_PREFIX + secrets.token_hex(8)
        """This listener's own NOTIFY channel: the projector sends it the rows its commands changed."""

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values()) + sum(len(w) for w in self._outcome_waiters.values())

    async def start(self) -> None:
        async with self._lock:
            if self._conn is not None:
                return
            conn = await connect(self.settings)
            with translate_db_errors("subscribing to projection changes"):
                await conn.add_listener(CHANGES_CHANNEL, self._on_notify)
                await conn.add_listener(OUTCOMES_CHANNEL, self._on_outcome)
                await conn.add_listener(self.reply_channel, self._on_reply)
            conn.add_termination_listener(self._on_terminated)
            self._conn = conn

    async def stop(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            aid, version, state = payload.rsplit("|", 2)
            change = Change(aid, int(version), State(state))
        except ValueError:
            return  # not ours: the channel is namespaced, but be strict about what wakes a waiter
        for w in list(self._waiters.get(change.assessment_id, ())):
            if not w.future.done() and w.predicate(change.version, change.state):
                w.future.set_result(None)

    def _on_outcome(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            command_id, _aid, accepted, version = payload.rsplit("|", 3)
            result: _Answer = (accepted == "1", int(version) if version else None, None)
        except ValueError:
            return
        self._answer(command_id, result)

    def _on_reply(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        # JSON holds no raw newline, so the first one ends the row; the command id is last, whole.
        row, _, tail = payload.partition("\n")
        version, _, command_id = tail.partition("|")
        waiting = self._outcome_waiters.get(command_id)
        if not waiting:
            return  # answered already (its outcome came first), or its caller gave up
        try:
            state = assessment_from_json(json.loads(row))
            result: _Answer = (True, int(version), state)
        except (ValueError, KeyError, TypeError) as e:
            # Not lost: the outcome notification follows and answers, and the state is then read.
            log.warning("unreadable reply notification for command %r (%s: %s); reading the state instead",
                        command_id, type(e).__name__, e)
            return
        self._answer(command_id, result)

    def _answer(self, command_id: str, result: _Answer) -> None:
        """Wake the waiters of ``command_id`` not answered yet (the first notification answers)."""
        for f in list(self._outcome_waiters.get(command_id, ())):
            if not f.done():
                f.set_result(result)

    def _on_terminated(self, _conn: Any) -> None:
        self._conn = None
        err = DatabaseUnavailable("the LISTEN connection to PostgreSQL was lost")
        futures: list[asyncio.Future[Any]] = [w.future for ws in self._waiters.values() for w in ws]
        futures += [f for fs in self._outcome_waiters.values() for f in fs]
        for f in futures:
            if not f.done():
                f.set_exception(err)

    async def wait_for_outcome(
        self,
        command_id: str,
        assessment_id: str,
        read: Callable[[str], Awaitable[Outcome | None]],
        timeout_s: float,
        send: Callable[[], Awaitable[None]],
        *,
        may_exist: bool = True,
    ) -> tuple[bool, int | None, Outcome | None, Assessment | None]:
        """Send a command and wait for its outcome: ``(accepted, version, outcome_row, state)``.

        Registers first, then (when ``may_exist``: a caller-chosen command id) reads the outcome
        table, and only if nothing is there sends; a re-sent command id whose outcome is known
        returns without touching Kafka. An accepted outcome is answered from the notification
        alone (``outcome_row`` is None), with the assessment's stored state when the reply
        notification carried it (else ``state`` is None); a rejected one is read back for its
        error details.
        """
        # One deadline for the whole call - the outcome look-up, the send (which blocks while the
        # broker is unreachable: aiokafka waits for metadata and for the acks) and the wait - so a
        # caller is never held past ``timeout_s``. A send cut short may still reach the log later:
        # harmless, the command id makes a second delivery a duplicate.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        stage = "outcome (is the command processor running?)"
        future: asyncio.Future[_Answer] = loop.create_future()
        self._outcome_waiters.setdefault(command_id, set()).add(future)
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await self.start()
                    if may_exist:
                        found = await read(command_id)
                        if found is not None:
                            return found.accepted, found.version, found, None
                    stage = "acknowledgement of the command by Kafka (is the broker reachable?)"
                    await send()
                    stage = "outcome (is the command processor running?)"
                    accepted, version, state = await asyncio.shield(future)
            except TimeoutError as e:
                raise CommandTimeout(command_id, assessment_id, timeout_s, waiting_for=stage) from e
            if accepted:
                return accepted, version, None, state
            row = await read(command_id)
            if row is None:  # pragma: no cover - the notification follows the commit of the row
                raise DatabaseUnavailable(f"notified of command {command_id!r} but its outcome is not readable")
            return row.accepted, row.version, row, None
        finally:
            fs = self._outcome_waiters.get(command_id)
            if fs is not None:
                fs.discard(future)
                if not fs:
                    del self._outcome_waiters[command_id]

    async def wait_for(
        self,
        assessment_id: str,
        predicate: Callable[[int, State], bool],
        read: Callable[[str], Awaitable[Assessment | None]],
        timeout_s: float,
        waiting_for: str,
    ) -> Assessment:
        """Return the assessment once ``predicate(version, state)`` holds, reading it with ``read``.

        ``timeout_s`` bounds the whole call, reads of a PostgreSQL that stopped answering included."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        waiter = _Waiter(predicate)
        self._waiters.setdefault(assessment_id, set()).add(waiter)
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await self.start()
                    while True:
                        # Registered first, read second: see the module docstring.
                        current = await read(assessment_id)
                        if current is not None and predicate(current.version, current.state):
                            return current
                        await asyncio.shield(waiter.future)
                        # Woken, but the state may have moved on again before our read: re-arm and re-check.
                        waiter.future = loop.create_future()
            except TimeoutError as e:
                raise WaitTimeout(assessment_id, timeout_s, waiting_for) from e
        finally:
            ws = self._waiters.get(assessment_id)
            if ws is not None:
                ws.discard(waiter)
                if not ws:
                    del self._waiters[assessment_id]
