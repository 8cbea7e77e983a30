"""The command model against the real services: every transition, races, idempotency, deadlines."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime

import pytest

from assessment_store import (
    AssessmentStore,
    InvalidTransition,
    Settings,
    State,
    ValidationError,
    VersionConflict,
)
from assessment_store.core import CommandEnvelope, Create, UpdateProgress, new_id
from assessment_store.testing import topic_end_offsets
from assessment_store.stack import Stack
from assessment_store.stack._procs import is_alive, wait_until
from assessment_store.streams import CommandSender

from .state_table import LEGAL, TRANSITION_NAMES

pytestmark = pytest.mark.stack



async def _in_state(store: AssessmentStore, state: State) -> str:
    aid = await store.create_assessment({"table": state.value})
    if state is State.CANCELLED:
        await store.cancel_assessment(aid, "table")
    elif state is not State.PENDING:
        await store.start_assessment(aid)
        if state is State.COMPLETED:
            await store.complete_assessment(aid, {"ok": 1})
        elif state is State.FAILED:
            await store.fail_assessment(aid, "table", retryable=True)
    assert (await store.get_state(aid)).state is state
    return aid


async def _apply(store: AssessmentStore, aid: str, name: str) -> None:
    match name:
        case "start":
            await store.start_assessment(aid)
        case "update_progress":
            await store.update_progress(aid, 33, "table")
        case "complete":
            await store.complete_assessment(aid, {"done": True})
        case "fail":
            await store.fail_assessment(aid, "table failure")
        case "cancel":
            await store.cancel_assessment(aid, "table cancel")
        case "retry":
            await store.retry_assessment(aid)


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
async def test_every_state_and_transition_pair(store: AssessmentStore, state: State) -> None:
    """Each of the 6 transitions from each of the 5 states: legal ones move the state and add exactly
    one event; illegal ones raise InvalidTransition (id, state, transition) and add no event."""
    for name in TRANSITION_NAMES:
        aid = await _in_state(store, state)
        before = await store.get_history(aid)
        if (state, name) in LEGAL:
            await _apply(store, aid, name)
            after = await store.get_state(aid)
            assert after.state is LEGAL[(state, name)], name
            history = await store.get_history(aid)
            assert [h["version"] for h in history] == list(range(1, len(before) + 2)), name
        else:
            with pytest.raises(InvalidTransition) as info:
                await _apply(store, aid, name)
            assert (info.value.assessment_id, info.value.state, info.value.transition) == (aid, state.value, name)
            assert await store.get_history(aid) == before, f"{state.value}/{name} appended an event"


async def test_racing_writers_one_winner_per_version(stack_settings: Settings) -> None:
    """50 writers (5 clients x 10 tasks) race on one assessment with the same expected version, over
    4 rounds: exactly one wins each round, the rest get VersionConflict; the history is gapless."""
    clients = [AssessmentStore(stack_settings) for _ in range(5)]
    await asyncio.gather(*(c.start() for c in clients))
    try:
        aid = await clients[0].create_assessment({"race": True})
        await clients[0].start_assessment(aid)
        for round_ in range(4):
            version = (await clients[0].get_state(aid)).version

            async def write(i: int, v: int = version) -> str:
                try:
                    await clients[i % 5].update_progress(aid, i, f"writer {i}", expected_version=v)
                    return "won"
                except VersionConflict as e:
                    assert (e.assessment_id, e.expected) == (aid, v)
                    return "lost"

            results = await asyncio.gather(*(write(i) for i in range(50)))
            assert results.count("won") == 1, f"round {round_}: {results.count('won')} winners"
            assert results.count("lost") == 49
        history = await clients[0].get_history(aid)
        assert [h["version"] for h in history] == list(range(1, 7))
        assert len({h["event_id"] for h in history}) == 6
    finally:
        await asyncio.gather(*(c.stop() for c in clients))


async def test_same_command_id_returns_original_outcome(store: AssessmentStore) -> None:
    """Re-sending an accepted command returns its original result and appends nothing; re-sending a
    rejected one raises the original error."""
    aid = await store.create_assessment({"idem": 1})
    cid = new_id()
    first = await store.start_assessment(aid, command_id=cid)
    ends = await topic_end_offsets(store.settings, store.settings.events_topic)
    again = await store.start_assessment(aid, command_id=cid)
    assert (again.version, again.state) == (first.version, State.PROCESSING)
    assert await topic_end_offsets(store.settings, store.settings.events_topic) == ends
    rejected = new_id()
    with pytest.raises(InvalidTransition):
        await store.retry_assessment(aid, command_id=rejected)
    await store.fail_assessment(aid, "now retry would be legal")
    with pytest.raises(InvalidTransition):  # still the original answer
        await store.retry_assessment(aid, command_id=rejected)


async def test_idempotency_survives_processor_kill_9(store: AssessmentStore, stack_settings: Settings) -> None:
    """A command sent while the processor is dead (kill -9) is applied once after restart; sending the
    same command id again afterwards appends nothing."""
    stack = Stack(stack_settings)
    aid = await store.create_assessment({"kill": 9})
    await store.start_assessment(aid)
    pid = stack.processor.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert await asyncio.to_thread(wait_until, lambda: not is_alive(pid), 10.0)

    cid = new_id()
    cmd = UpdateProgress(assessment_id=aid, progress=70, message="sent while down", command_id=cid)
    async with CommandSender(stack_settings) as sender:  # lands in Kafka; nobody processes it yet
        await sender.send(CommandEnvelope(cmd, datetime.now(UTC)))
        await sender.send(CommandEnvelope(cmd, datetime.now(UTC)))  # and a re-delivery of it
    await asyncio.to_thread(stack.up, ["processor"], lambda _m: None)

    state = await store.execute(cmd)  # the same command id a third time: waits for the original outcome
    assert (state.progress, state.version) == (70, 3)
    history = await store.get_history(aid)
    assert [h["version"] for h in history] == [1, 2, 3]
    assert [h["causation_id"] for h in history].count(cid) == 1
    ends = await topic_end_offsets(store.settings, store.settings.events_topic)
    assert (await store.execute(cmd)).version == 3
    # The restarted processor serves each partition as soon as it has taken it, so fence records of
    # partitions it takes later may land meanwhile: those, and nothing else, may follow ``ends``.
    assert await _records_after(stack_settings, ends, exclude_header="fence-epoch") == []
    assert [h["causation_id"] for h in await store.get_history(aid)].count(cid) == 1


async def _records_after(settings: Settings, ends: dict[int, int], *, exclude_header: str) -> list[tuple[int, int]]:
    """(partition, offset) of the events-topic records after ``ends``, except those carrying ``exclude_header``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    now = await topic_end_offsets(settings, settings.events_topic)
    todo = {TopicPartition(settings.events_topic, p): end for p, end in now.items() if end > ends.get(p, 0)}
    if not todo:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    found: list[tuple[int, int]] = []
    try:
        consumer.assign(list(todo))
        for tp in todo:
            consumer.seek(tp, ends.get(tp.partition, 0))
        while [tp for tp, end in todo.items() if await consumer.position(tp) < end]:
            for tp, recs in (await consumer.getmany(timeout_ms=1000)).items():
                found += [(tp.partition, r.offset) for r in recs
                          if r.offset < todo[tp] and not any(k == exclude_header for k, _ in r.headers)]
    finally:
        await consumer.stop()
    return found


async def test_deadline_fails_a_stuck_assessment(store: AssessmentStore) -> None:
    """An assessment left PROCESSING past its processing timeout is failed by the store, retryable,
    with a timeout reason."""
    aid = await store.create_assessment({"stuck": True}, processing_timeout_ms=300)
    await store.start_assessment(aid)
    done = await store.wait_for_completion(aid, timeout=15)
    assert done.state is State.FAILED
    assert done.error_message is not None and "deadline exceeded" in done.error_message
    assert done.retryable is True
    history = await store.get_history(aid)
    assert history[-1]["type"] == "AssessmentFailed"
    assert str(history[-1]["causation_id"]).startswith("deadline:")


async def test_invalid_fields_are_refused_before_sending(store: AssessmentStore) -> None:
    """A progress of 150 raises ValidationError naming 'progress'."""
    aid = await store.create_assessment({"v": 1})
    with pytest.raises(ValidationError) as info:
        await store.update_progress(aid, 150)
    assert info.value.field == "progress"


async def test_a_hostile_command_straight_to_kafka_stops_nothing(store: AssessmentStore, stack_settings: Settings) -> None:
    """Commands that bypass client validation (NUL in ids and text, lone surrogates) are refused; writes keep flowing."""
    hostile = [
        Create(assessment_id="nul\x00id", request={"k\x00": "v"}),
        Create(assessment_id=new_id(), request={"text": "a\x00b"}, command_id="cmd\x00id"),
        Create(assessment_id=new_id(), request={"lone": "\ud800"}),
        UpdateProgress(assessment_id="sur\udc00rogate", progress=5, message="m\x00"),
    ]
    sent = 0
    async with CommandSender(stack_settings) as sender:
        for cmd in hostile:
            try:
                await sender.send(CommandEnvelope(cmd, datetime.now(UTC)))
                sent += 1
            except ValidationError:
                continue  # the encoder refused it (no UTF-8 for a lone surrogate): it never reached the log
    assert sent >= 2  # the NUL ones are valid Avro: they reach the processor
    aid = await store.create_assessment({"after": "hostile commands"})
    await store.start_assessment(aid)
    assert (await store.get_state(aid)).version == 2
