"""``migrate rollout``: the gated gradual rollout, its decisions as events (docs/migration.md, "Rollout").

The controller moves ``migration_percentage`` through the plan's steps. Every decision it takes
(start, advance, hold, resume, pause, rollback, abort, complete) is first appended to the rollout
topic (one partition, kept forever), with the gate readings it was taken on, and then carried out
on the flags. Its state is the fold of that topic (``fold``), nothing else:

* Ordering: decision first, flags second. A controller killed between the two finds the decision
  on restart and applies the flags for the state it folded (``FlagStore.update`` with unchanged
  values appends nothing), so a step is never skipped (the advance is in the log before its flags)
  nor repeated (an advance is folded only when its ``fromStep`` is the current step).
* Soak on restart: the step's start is the time of its start/advance event. The controller re-reads
  the observation windows from that time (``offsets_for_times`` on the observations topic) and
  re-evaluates them, so the soak keeps counting from the step's start; decisions already in the log
  for those windows are not written again (``lastWindow``).
* Single controller: a session-level PostgreSQL advisory lock, held on a dedicated connection for
  the controller's life (a second controller is refused; ``kill -9`` closes the connection, which
  frees the lock). Each controller then appends a ``lease`` event with the next epoch and stamps
  its decisions with it; the fold ignores decisions of an epoch below the latest lease, as the
  processor's log fence does with a zombie's writes (``streams/_fence.py``). Before each append the
  controller checks its lock connection is still alive.
* Operator commands (``migrate pause|resume|abort``) are ``command`` events; the running controller
  obeys each once, with a decision naming its ``commandId``. ``migrate rollback`` does not wait for
  a controller: it sets the flags and appends the rollback decision itself (epoch null: an
  operator's decision is never fenced); a running controller folds it and stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from assessment_store.core import JSON, Backoff, BackendError, Settings, StoreUsageError, new_id, outage_name
from assessment_store.projections import connect, translate_db_errors
from assessment_store.streams import Principal, TopicSpec, ensure_topics, kafka_client_options, translate_kafka_errors

from ._flags import FLAGS_TOPIC, FlagStore, default_actor
from ._gates import Decision, GateThresholds, GateTracker, HealthReading, Level, WindowEvaluation, evaluate_window, fleet_window
from ._observations import OBSERVATIONS_TOPIC, WindowObservation, observations_topic_spec
from ._reverse import reverse_sync_status

__all__ = [
    "DEFAULT_STEPS", "ROLLOUT_TOPIC", "HealthProbe", "NoRollout", "RolloutController", "RolloutEnded", "RolloutEvent",
    "RolloutLocked",
    "RolloutPlan", "RolloutState", "TERMINAL", "fold", "manual_rollback", "read_rollout", "reverse_sync_probe",
    "rollout_topic_spec", "send_command",
]

log = logging.getLogger("assessment_store.migration.rollout")

ROLLOUT_TOPIC = "assessments.migration-rollout"
DEFAULT_STEPS: tuple[float, ...] = (1, 5, 10, 25, 50, 75, 90, 95, 99, 100)
DECISIONS = ("start", "advance", "hold", "resume", "pause", "rollback", "abort", "complete")
TERMINAL = ("complete", "rolled_back", "aborted")
COMMANDS = ("pause", "resume", "abort")

HealthProbe = Callable[[], Awaitable[HealthReading]]


def rollout_topic_spec(topic: str = ROLLOUT_TOPIC) -> TopicSpec:
    # One partition: the decisions' total order is the controller's state. Kept forever (the record
    # of the migration, and what a restarted controller folds).
    return TopicSpec(topic, 1, {"cleanup.policy": "delete", "retention.ms": "-1"})


class RolloutLocked(StoreUsageError):
    """Another controller holds the rollout (``.topic``): one controller at a time."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        super().__init__(f"another `migrate rollout` controller is running for {topic} (PostgreSQL advisory lock held)")


class RolloutEnded(StoreUsageError):
    """The last rollout ended (``.status``) and a new one was not asked for (``new=True``, ``--new``):
    a supervisor rerunning the controller after an automatic rollback must not roll forward again."""

    def __init__(self, topic: str, rollout_id: str | None, status: str | None) -> None:
        self.topic = topic
        self.rollout_id = rollout_id
        self.status = status
        super().__init__(f"the last rollout on {topic} ({rollout_id}) is {status}; start a new one with --new")


class NoRollout(StoreUsageError):
    """A command for a rollout when none is running (``.topic``, ``.status``)."""

    def __init__(self, topic: str, status: str | None) -> None:
        self.topic = topic
        self.status = status
        super().__init__(f"no rollout is running on {topic}" + (f" (the last one is {status})" if status else ""))


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    steps: tuple[float, ...] = DEFAULT_STEPS
    first_soak_s: float = 24 * 3600
    soak_s: float = 12 * 3600
    window_s: float = 60.0
    grace_s: float = 5.0
    """How long after a window's end the controller waits for late records before evaluating it."""
    thresholds: GateThresholds = GateThresholds()

    def __post_init__(self) -> None:
        if not self.steps or any(not (0 < s <= 100) for s in self.steps) or list(self.steps) != sorted(set(self.steps)):
            raise ValueError("steps must be strictly increasing percentages in (0, 100]")
        if self.first_soak_s < 0 or self.soak_s < 0 or self.window_s <= 0 or self.grace_s < 0:
            raise ValueError("soak times and grace must be >= 0, the window > 0")

    def soak_for(self, step: int) -> float:
        return self.first_soak_s if step == 0 else self.soak_s

    def to_json(self) -> dict[str, JSON]:
        return {"steps": list(self.steps), "firstSoakS": self.first_soak_s, "soakS": self.soak_s,
                "windowS": self.window_s, "graceS": self.grace_s, "thresholds": self.thresholds.to_json()}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RolloutPlan:
        return cls(steps=tuple(float(s) for s in doc["steps"]), first_soak_s=float(doc["firstSoakS"]),
                   soak_s=float(doc["soakS"]), window_s=float(doc["windowS"]), grace_s=float(doc["graceS"]),
                   thresholds=GateThresholds.from_json(doc["thresholds"]))


@dataclass(frozen=True, slots=True)
class RolloutEvent:
    """One record of the rollout topic (docs/migration.md, "Events")."""

    type: str
    rollout_id: str | None
    at_s: float
    actor: str
    epoch: int | None = None
    step: int | None = None
    percentage: float | None = None
    from_step: int | None = None
    reason: str = ""
    readings: tuple[dict[str, JSON], ...] = ()
    window: float | None = None
    command: str | None = None
    command_id: str | None = None
    plan: RolloutPlan | None = None
    event_id: str = field(default_factory=new_id)
    offset: int | None = None

    def to_json(self) -> dict[str, JSON]:
        return {"type": self.type, "eventId": self.event_id, "rolloutId": self.rollout_id,
                "at": datetime.fromtimestamp(self.at_s, UTC).isoformat(), "atS": self.at_s, "actor": self.actor,
                "epoch": self.epoch, "step": self.step, "percentage": self.percentage, "fromStep": self.from_step,
                "reason": self.reason, "readings": list(self.readings), "window": self.window,
                "command": self.command, "commandId": self.command_id,
                "plan": None if self.plan is None else self.plan.to_json()}

    @classmethod
    def from_record(cls, value: bytes, offset: int) -> RolloutEvent:
        d = json.loads(value)

        def opt_int(k: str) -> int | None:
            return None if d.get(k) is None else int(d[k])

        return cls(type=str(d["type"]), rollout_id=d.get("rolloutId"), at_s=float(d["atS"]), actor=str(d["actor"]),
                   epoch=opt_int("epoch"), step=opt_int("step"),
                   percentage=None if d.get("percentage") is None else float(d["percentage"]),
                   from_step=opt_int("fromStep"), reason=str(d.get("reason") or ""),
                   readings=tuple(d.get("readings") or ()),
                   window=None if d.get("window") is None else float(d["window"]),
                   command=d.get("command"), command_id=d.get("commandId"),
                   plan=None if d.get("plan") is None else RolloutPlan.from_json(d["plan"]),
                   event_id=str(d["eventId"]), offset=offset)


@dataclass(frozen=True, slots=True)
class RolloutState:
    """The fold of the rollout topic: the latest rollout and where it is."""

    rollout_id: str | None = None
    plan: RolloutPlan | None = None
    status: str | None = None
    """running | held | paused | complete | rolled_back | aborted; None: no rollout ever started."""
    step: int = 0
    step_started_s: float = 0.0
    held: bool = False
    paused: bool = False
    epoch: int = 0
    """The latest lease's epoch (over all rollouts)."""
    last_window: float | None = None
    """The latest window a decision of the current step was taken on."""
    pending: tuple[RolloutEvent, ...] = ()
    """Operator commands not yet obeyed."""
    events: tuple[RolloutEvent, ...] = ()
    """The current rollout's events, oldest first."""
    fenced: int = 0

    @property
    def percentage(self) -> float | None:
        return None if self.plan is None else self.plan.steps[self.step]

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_json(self, *, now_s: float | None = None, last: int = 10) -> dict[str, JSON]:
        now_s = time.time() if now_s is None else now_s
        return {"rolloutId": self.rollout_id, "status": self.status, "step": self.step,
                "percentage": self.percentage, "stepStartedS": self.step_started_s,
                "timeInStepS": None if self.status is None else round(now_s - self.step_started_s, 3),
                "soakS": None if self.plan is None else self.plan.soak_for(self.step), "epoch": self.epoch,
                "plan": None if self.plan is None else self.plan.to_json(),
                "pendingCommands": [e.command for e in self.pending],
                "decisions": [e.to_json() for e in self.events if e.type in DECISIONS][-last:]}


def fold(state: RolloutState, ev: RolloutEvent) -> RolloutState:
    """One event into the state (pure)."""
    if ev.type == "lease":
        return replace(state, epoch=max(state.epoch, ev.epoch or 0))
    if ev.epoch is not None and ev.epoch < state.epoch:
        return replace(state, fenced=state.fenced + 1)  # a deposed controller's late write
    if ev.type == "start":
        assert ev.plan is not None
        return RolloutState(rollout_id=ev.rollout_id, plan=ev.plan, status="running", step=0,
                            step_started_s=ev.at_s, epoch=state.epoch, events=(ev,), fenced=state.fenced)
    if ev.type == "rollback" and state.status == "complete" and ev.rollout_id == state.rollout_id:
        return replace(state, events=(*state.events, ev), status="rolled_back")  # a completed migration undone
    if ev.rollout_id != state.rollout_id or state.terminal:
        return state  # another (older) rollout's record, or one after the end
    events = (*state.events, ev)
    if ev.type == "command":
        return replace(state, events=events, pending=(*state.pending, ev))
    pending = tuple(p for p in state.pending if p.command_id != ev.command_id) if ev.command_id else state.pending
    s = replace(state, events=events, pending=pending)
    if ev.window is not None:
        s = replace(s, last_window=ev.window)
    match ev.type:
        case "advance":
            if ev.from_step != state.step or ev.step is None:
                return state  # a duplicate or stale advance: never moves twice
            s = replace(s, step=ev.step, step_started_s=ev.at_s, held=False, last_window=None)
        case "hold":
            s = replace(s, held=True)
        case "resume":
            s = replace(s, held=False) if ev.command_id is None else replace(s, paused=False)
        case "pause":
            s = replace(s, paused=True)
        case "rollback":
            return replace(s, status="rolled_back")
        case "abort":
            return replace(s, status="aborted")
        case "complete":
            return replace(s, status="complete")
    return replace(s, status="paused" if s.paused else "held" if s.held else "running")


# --- the topic -------------------------------------------------------------------------------------


async def _read_all(settings: Settings, topic: str, principal: Principal = "admin") -> list[RolloutEvent]:
    tp = TopicPartition(topic, 0)
    reader = AIOKafkaConsumer(**kafka_client_options(settings, principal), group_id=None, enable_auto_commit=False,
                              fetch_max_wait_ms=50)
    events: list[RolloutEvent | None] = []
    with translate_kafka_errors(f"reading {topic}"):
        await reader.start()
        try:
            reader.assign([tp])
            await reader.seek_to_beginning(tp)
            end = (await reader.end_offsets([tp]))[tp]
            while await reader.position(tp) < end:
                batch = await reader.getmany(tp, timeout_ms=1000)
                events.extend(_decode(r.value, r.offset) for r in batch.get(tp, []) if r.offset < end)
        finally:
            await reader.stop()
    return [e for e in events if e is not None]


def _decode(value: bytes | None, offset: int) -> RolloutEvent | None:
    if value is None:
        return None
    try:
        return RolloutEvent.from_record(value, offset)
    except (ValueError, KeyError, TypeError):
        log.warning("rollout: record %s is not a rollout event; skipped", offset)
        return None


async def read_rollout(settings: Settings, *, topic: str = ROLLOUT_TOPIC) -> RolloutState:
    """The current state: the fold of the whole rollout topic."""
    await ensure_topics(settings, [rollout_topic_spec(topic)])
    state = RolloutState()
    for ev in await _read_all(settings, topic):
        state = fold(state, ev)
    return state


async def _append(settings: Settings, topic: str, ev: RolloutEvent) -> None:
    producer = AIOKafkaProducer(**kafka_client_options(settings, "admin"), acks="all", enable_idempotence=True)
    with translate_kafka_errors(f"appending to {topic}"):
        await producer.start()
        try:
            await producer.send_and_wait(topic, json.dumps(ev.to_json()).encode(), partition=0)
        finally:
            await producer.stop()


async def send_command(settings: Settings, command: str, *, actor: str | None = None,
                       topic: str = ROLLOUT_TOPIC) -> RolloutEvent:
    """Append an operator command (pause, resume, abort) for the running controller to obey."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}")
    state = await read_rollout(settings, topic=topic)
    if state.status is None or state.terminal:
        raise NoRollout(topic, state.status)
    ev = RolloutEvent("command", state.rollout_id, time.time(), actor or default_actor(), command=command,
                      command_id=new_id())
    await _append(settings, topic, ev)
    return ev


async def manual_rollback(settings: Settings, *, actor: str | None = None, reason: str = "manual rollback",
                          topic: str = ROLLOUT_TOPIC, flags_topic: str = FLAGS_TOPIC) -> RolloutEvent:
    """Everything to legacy now (the flags first: nothing waits for a controller), then the decision."""
    who = actor or default_actor()
    async with FlagStore(settings, topic=flags_topic) as flags:
        await flags.update(who, enable_assessment_store=False, enable_dual_mode=False)
    state = await read_rollout(settings, topic=topic)
    ev = RolloutEvent("rollback", state.rollout_id, time.time(), who, step=state.step if state.status else None,
                      percentage=state.percentage, reason=reason)
    await _append(settings, topic, ev)
    return ev


# --- health probes ---------------------------------------------------------------------------------


def reverse_sync_probe(settings: Settings, *, max_behind: int = 10_000, group_id: str | None = None) -> HealthProbe:
    """Unhealthy while the reverse sync is not running or more than ``max_behind`` events behind:
    a rollback then would send callers to a legacy that lacks the store's changes."""

    async def probe() -> HealthReading:
        status = await reverse_sync_status(settings, group_id=group_id)
        healthy = status.members > 0 and status.behind <= max_behind
        return HealthReading(healthy, status.describe())

    return probe


# --- the controller --------------------------------------------------------------------------------


def _lock_key(topic: str) -> int:
    # One controller per rollout topic: the lock key is derived from the topic's name.
    return 0x726F6C6C_00000000 | zlib.crc32(topic.encode())


class RolloutController:
    """Runs one rollout (a new one, or the unfinished one in the topic) until it ends.

    ``on_event`` is called with every event this controller appends (the CLI prints progress).
    """

    def __init__(self, settings: Settings, plan: RolloutPlan, *, actor: str | None = None,
                 topic: str = ROLLOUT_TOPIC, observations_topic: str = OBSERVATIONS_TOPIC,
                 flags_topic: str = FLAGS_TOPIC, health_probe: HealthProbe | None = None,
                 on_event: Callable[[RolloutEvent, RolloutState], None] | None = None, tick_s: float | None = None,
                 new: bool = False) -> None:
        """``new``: start a new rollout when the last one ended; without it such a run is refused
        (``RolloutEnded``) after putting the flags where the ended rollout left them."""
        self.settings = settings
        self.requested_plan = plan
        self.actor = actor or f"rollout-controller:{default_actor()}"
        self.topic = topic
        self.observations_topic = observations_topic
        self.flags_topic = flags_topic
        self.health_probe = health_probe
        self.on_event = on_event
        self.tick_s = tick_s
        self.new = new
        self.state = RolloutState()
        self.epoch = 0
        self.evaluations: list[WindowEvaluation] = []
        """Every window this controller evaluated, in order (tests and status read them)."""
        self._tp = TopicPartition(topic, 0)
        self._obs_tp = TopicPartition(observations_topic, 0)
        self._observations: dict[tuple[str, float], WindowObservation] = {}
        self._lock_conn: asyncpg.Connection | None = None
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._obs_consumer: AIOKafkaConsumer | None = None
        self._flags: FlagStore | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self, *, outages: Backoff | None = None) -> RolloutState:
        """Until the rollout is complete, rolled back or aborted; returns the final state.

        Without ``outages`` a Kafka or PostgreSQL failure ends the run (``BackendError``); running the
        controller again resumes. With it, the controller does that itself: it closes everything
        (freeing its lock), waits the backoff, and opens again as a restarted controller would: it
        takes the lock again, folds the topic, leases the next epoch and resumes the same rollout
        at the step the log says, re-reading the step's observations. Only retriable errors are
        ridden out (an ACL refusal is not), and another controller taking the lock meanwhile ends
        the run with ``RolloutLocked``.
        """
        resuming: str | None = None
        while True:
            try:
                await self._open()
                await self._attach()
                if resuming is None:
                    resuming = self.state.rollout_id
                await self._loop()
                return self.state
            except RolloutEnded:
                if resuming is not None and self.state.rollout_id == resuming:
                    # It ended while this controller was cut off (an operator's rollback or abort):
                    # _attach has put the flags where that end leaves them.
                    return self.state
                raise
            except BackendError as e:
                if outages is None or not e.retriable:
                    raise
                if resuming is not None:
                    # The rollout this run started or resumed is in the log: from now on resume it,
                    # never start another (``new`` would, once it has ended).
                    self.new = False
                await outages.failed(f"rollout controller cut off ({outage_name(e)})", e)
                self.state = RolloutState()  # folded again from the topic's start on reopening
            finally:
                await self._close()

    async def _open(self) -> None:
        conn = await connect(self.settings)
        with translate_db_errors("taking the rollout controller's lock"):
            got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", _lock_key(self.topic))
        if not got:
            await conn.close()
            raise RolloutLocked(self.topic)
        self._lock_conn = conn
        await ensure_topics(self.settings, [rollout_topic_spec(self.topic), observations_topic_spec(self.observations_topic)])
        opts = kafka_client_options(self.settings, "admin")
        self._producer = AIOKafkaProducer(**opts, acks="all", enable_idempotence=True, linger_ms=0)
        self._consumer = AIOKafkaConsumer(**opts, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50)
        self._obs_consumer = AIOKafkaConsumer(**opts, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50)
        with translate_kafka_errors(f"starting the rollout controller on {self.settings.kafka_bootstrap}"):
            await self._producer.start()
            await self._consumer.start()
            await self._obs_consumer.start()
            self._consumer.assign([self._tp])
            await self._consumer.seek_to_beginning(self._tp)
            self._obs_consumer.assign([self._obs_tp])
        self._flags = FlagStore(self.settings, topic=self.flags_topic)
        await self._flags.start()

    async def _close(self) -> None:
        for client in (self._obs_consumer, self._consumer, self._producer):
            if client is not None:
                try:
                    await client.stop()
                except Exception:
                    log.warning("rollout: stopping a Kafka client failed", exc_info=True)
        if self._flags is not None:
            await self._flags.stop()
        if self._lock_conn is not None:
            await self._lock_conn.close()  # frees the advisory lock
        self._obs_consumer = self._consumer = self._producer = None
        self._flags = self._lock_conn = None

    async def _attach(self) -> None:
        """Fold the topic, take the next epoch, start or resume, and put the flags where the state says."""
        await self._poll_rollout(to_end=True)
        if self.state.terminal and not self.new:
            # Crash-safe end: a rollback decided but not yet carried out is carried out now.
            await self._apply_flags()
            raise RolloutEnded(self.topic, self.state.rollout_id, self.state.status)
        self.epoch = self.state.epoch + 1
        await self._append(RolloutEvent("lease", self.state.rollout_id, time.time(), self.actor, epoch=self.epoch))
        if self.state.status is None or self.state.terminal:
            plan = self.requested_plan
            await self._append(RolloutEvent("start", new_id(), time.time(), self.actor, epoch=self.epoch, step=0,
                                            percentage=plan.steps[0], plan=plan,
                                            reason=f"steps {', '.join(f'{s:g}' for s in plan.steps)}"))
        else:
            log.info("rollout %s: resuming at step %d (%g %%), started %.1f s ago", self.state.rollout_id,
                     self.state.step, self.state.percentage, time.time() - self.state.step_started_s)
        await self._apply_flags()
        await self._seek_observations()

    async def _all_to_legacy(self) -> None:
        assert self._flags is not None
        await self._flags.update(self.actor, enable_assessment_store=False, enable_dual_mode=False)

    async def _apply_flags(self) -> None:
        assert self._flags is not None
        s = self.state
        if s.status == "rolled_back":
            await self._flags.update(self.actor, enable_assessment_store=False, enable_dual_mode=False)
        elif not s.terminal:
            await self._flags.update(self.actor, enable_assessment_store=True, enable_dual_mode=True,
                                     migration_percentage=s.percentage)

    # --- the loop ------------------------------------------------------------------------------

    @property
    def plan(self) -> RolloutPlan:
        assert self.state.plan is not None
        return self.state.plan

    def _first_window(self) -> float:
        # The first window that starts at or after the step's start: the one before it saw the
        # previous percentage for part of its time.
        w = self.plan.window_s
        return math.ceil(self.state.step_started_s / w) * w

    async def _seek_observations(self) -> None:
        assert self._obs_consumer is not None
        self._observations.clear()
        self._tracker = GateTracker(self.plan.thresholds, self.plan.soak_for(self.state.step))
        self._next_window = self._first_window()
        self._step_first = len(self.evaluations)
        # Records of windows after the step's start were produced after it: seek by timestamp.
        since_ms = int((self.state.step_started_s - self.plan.window_s) * 1000)
        with translate_kafka_errors(f"seeking {self.observations_topic}"):
            found = await self._obs_consumer.offsets_for_times({self._obs_tp: since_ms})
            at = found.get(self._obs_tp)
            if at is None:
                await self._obs_consumer.seek_to_end(self._obs_tp)
            else:
                self._obs_consumer.seek(self._obs_tp, at.offset)

    async def _loop(self) -> None:
        tick = self.tick_s or min(1.0, max(0.05, self.plan.window_s / 10))
        while not self.state.terminal:
            await self._poll_rollout()
            if self.state.terminal:
                break  # an operator's rollback (or another terminal event)
            await self._obey_commands()
            if self.state.terminal:
                break
            await self._poll_observations()
            await self._evaluate_due()
            if self.state.terminal:
                break
            await asyncio.sleep(tick)

    async def _poll_rollout(self, *, to_end: bool = False, until: int | None = None) -> None:
        assert self._consumer is not None
        with translate_kafka_errors(f"reading {self.topic}"):
            end = (await self._consumer.end_offsets([self._tp]))[self._tp] if to_end else until
            while True:
                batch = await self._consumer.getmany(self._tp, timeout_ms=0 if end is None else 500)
                for rec in batch.get(self._tp, []):
                    ev = _decode(rec.value, rec.offset)
                    if ev is not None:
                        self.state = fold(self.state, ev)
                if end is None or await self._consumer.position(self._tp) >= end:
                    return

    async def _poll_observations(self) -> None:
        assert self._obs_consumer is not None
        with translate_kafka_errors(f"reading {self.observations_topic}"):
            batch = await self._obs_consumer.getmany(self._obs_tp, timeout_ms=0, max_records=10_000)
        for rec in batch.get(self._obs_tp, []):
            if rec.value is None:
                continue
            try:
                obs = WindowObservation.from_json(json.loads(rec.value))
            except (ValueError, KeyError, TypeError):
                log.warning("rollout: observation record %s unreadable; skipped", rec.offset)
                continue
            if obs.window_s == self.plan.window_s and obs.start >= self._next_window:
                # Idempotent per (instance, window): a re-sent record replaces the earlier one.
                self._observations[obs.key] = obs

    async def _health(self) -> HealthReading | None:
        if self.health_probe is None:
            return None
        try:
            return await self.health_probe()
        except Exception as e:  # a probe that cannot tell is not a healthy system
            return HealthReading(False, f"health probe failed: {e}")

    async def _evaluate_due(self) -> None:
        plan = self.plan
        now = time.time()
        health: HealthReading | None = None
        probed = False
        while self._next_window + plan.window_s + plan.grace_s <= now and not self.state.terminal:
            start = self._next_window
            self._next_window += plan.window_s
            live = start + plan.window_s + plan.grace_s + plan.window_s > now  # not a re-evaluation of the past
            if live and not probed:
                health, probed = await self._health(), True
            window = fleet_window(start, plan.window_s, [o for k, o in self._observations.items() if k[1] == start])
            for key in [k for k in self._observations if k[1] <= start]:
                del self._observations[key]
            ev = evaluate_window(window, plan.thresholds, health if live else None)
            self.evaluations.append(ev)
            decision = self._tracker.feed(ev)
            replayed = self.state.last_window is not None and start <= self.state.last_window
            if replayed:
                continue  # decided before a restart: the log already has it
            await self._decide(decision, ev)
        if self.state.terminal:
            return
        if (not self.state.paused and not self.state.held and self._tracker.passed_s >= plan.soak_for(self.state.step)
                and self.evaluations and self.evaluations[-1].window.start + plan.window_s <= now):
            await self._advance()

    def _recent(self, n: int) -> tuple[dict[str, JSON], ...]:
        # The windows the tracker's streak counted: the step's last n conclusive ones. An inconclusive
        # window neither extends nor breaks a streak, so it is no reading the decision was taken on.
        conclusive = [e for e in self.evaluations[self._step_first:] if e.level is not Level.INCONCLUSIVE]
        return tuple(e.to_json() for e in conclusive[-n:])

    async def _decide(self, decision: Decision, ev: WindowEvaluation) -> None:
        t = self.plan.thresholds
        s = self.state
        if decision is Decision.ROLLBACK:
            await self._append(RolloutEvent(
                "rollback", s.rollout_id, time.time(), self.actor, epoch=self.epoch, step=s.step,
                percentage=s.percentage, window=ev.window.start, readings=self._recent(t.rollback_windows),
                reason=f"{t.rollback_windows} consecutive windows at rollback level: "
                       + ", ".join(g.gate for g in ev.gates if g.level.label == "rollback")),
                effect=self._all_to_legacy)
        elif decision is Decision.HOLD:
            await self._append(RolloutEvent(
                "hold", s.rollout_id, time.time(), self.actor, epoch=self.epoch, step=s.step, percentage=s.percentage,
                window=ev.window.start, readings=self._recent(t.hold_windows),
                reason=f"{t.hold_windows} consecutive windows at hold level or worse: "
                       + ", ".join(g.gate for g in ev.gates if g.level.label in ("hold", "rollback"))))
        elif decision is Decision.CLEAR:
            await self._append(RolloutEvent(
                "resume", s.rollout_id, time.time(), self.actor, epoch=self.epoch, step=s.step, percentage=s.percentage,
                window=ev.window.start, readings=self._recent(1), reason="the gates pass again; the soak starts over"))

    async def _advance(self) -> None:
        s = self.state
        # The passing windows of this step that made up the soak (the last few of them).
        n = min(5, max(1, math.ceil(self.plan.soak_for(s.step) / self.plan.window_s)))
        passed = [e for e in self.evaluations[self._step_first:] if e.level.label == "pass"]
        readings = tuple(e.to_json() for e in passed[-n:])
        if s.step + 1 >= len(self.plan.steps):
            await self._append(RolloutEvent("complete", s.rollout_id, time.time(), self.actor, epoch=self.epoch,
                                            step=s.step, percentage=s.percentage, readings=readings,
                                            reason="the last step soaked healthy"))
            return
        await self._append(RolloutEvent(
            "advance", s.rollout_id, time.time(), self.actor, epoch=self.epoch, step=s.step + 1,
            percentage=self.plan.steps[s.step + 1], from_step=s.step, readings=readings,
            reason=f"step {s.step} ({s.percentage:g} %) soaked {self._tracker.passed_s:g} s healthy"))
        await self._apply_flags()
        await self._seek_observations()

    async def _obey_commands(self) -> None:
        for cmd in self.state.pending:
            s = self.state
            kind = cmd.command
            if kind == "abort":
                await self._append(RolloutEvent("abort", s.rollout_id, time.time(), self.actor, epoch=self.epoch,
                                                step=s.step, percentage=s.percentage, command_id=cmd.command_id,
                                                reason=f"aborted by {cmd.actor}; flags left at {s.percentage:g} %"))
                return
            # pause while paused / resume while running: obeyed as a no-op decision, so it is answered.
            await self._append(RolloutEvent(str(kind), s.rollout_id, time.time(), self.actor, epoch=self.epoch,
                                            step=s.step, percentage=s.percentage, command_id=cmd.command_id,
                                            reason=f"{kind} requested by {cmd.actor}"))

    async def _append(self, ev: RolloutEvent, effect: Callable[[], Awaitable[object]] | None = None) -> None:
        """Append ``ev``; once it is acknowledged (in the log), run ``effect``, then fold it."""
        assert self._producer is not None and self._lock_conn is not None
        # The lease: a controller whose lock connection died may have been replaced; it must not write.
        with translate_db_errors("checking the rollout controller's lock"):
            await self._lock_conn.fetchval("SELECT 1")
        with translate_kafka_errors(f"appending a {ev.type} to {self.topic}"):
            meta = await self._producer.send_and_wait(self.topic, json.dumps(ev.to_json()).encode(), partition=0)
        if effect is not None:
            # The decision is in the log: carry it out before spending time on reading it back.
            await effect()
        # Read our own write back: the consumer is the one path into the fold, so anything appended
        # before it (an operator's command) is folded first, in log order, exactly once.
        await self._poll_rollout(until=meta.offset + 1)
        if self.on_event is not None:
            self.on_event(ev, self.state)
