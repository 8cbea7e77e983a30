"""The command processor's snapshots (streams/_snapshot.py): a takeover loads the snapshot and folds
only the log after its checkpoint, ending in exactly the state a full rebuild gives; partial, corrupt
and fenced snapshot records; the bounded idempotency window."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer

from assessment_store import Settings
from assessment_store.core import (
    Command, CommandEnvelope, Complete, Create, Fail, Start, State, UpdateProgress,
)
from assessment_store.schemas import CommandCodec
from assessment_store.streams import CommandProcessor, publish_schemas, state_topic
from assessment_store.testing import eventually

from assessment_store.streams._snapshot import encode_marker, encode_state, scan_partition  # the record format these tests forge

pytestmark = pytest.mark.stack


def _settings(base: Settings, **overrides: object) -> Settings:
    """Topics and a processor group of the test's own, two partitions, a snapshot after every batch."""
    tag = f"snap-{uuid.uuid4().hex[:8]}"
    return base.model_copy(update={
        "events_topic": f"{tag}.events", "commands_topic": f"{tag}.commands", "outcomes_topic": f"{tag}.outcomes",
        "processor_group": f"{tag}-processor", "partitions": 2, "processor_snapshot_interval_s": 0.0,
        "consumer_session_timeout_ms": 6000, **overrides,
    })


def _handled(p: CommandProcessor) -> int:
    st = p.stats
    return st.accepted + st.rejected + st.duplicates + st.replayed


@contextlib.asynccontextmanager
async def _processor(settings: Settings, *, crash: bool = False) -> AsyncIterator[CommandProcessor]:
    """A processor running in this process until the block ends; ``crash``: ends without the final
    snapshot write of a clean stop (its run task is cancelled, as a kill would end it)."""
    proc = CommandProcessor(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))

    async def owned() -> int:
        if task.done():
            task.result()  # raises what stopped it
        return len(proc.owned_partitions)

    try:
        await eventually(owned, lambda n: n == settings.partitions, timeout_s=60, what="every partition taken over")
        yield proc
    finally:
        if crash:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        else:
            stop.set()
            await asyncio.wait_for(task, 60)
        await proc.stop()


async def _send(settings: Settings, proc: CommandProcessor, commands: list[Command]) -> None:
    """Send ``commands`` in order, pipelined (so the processor takes them in few batches), and wait
    until ``proc`` has handled all of them."""
    target = _handled(proc) + len(commands)
    await _produce(settings, commands)

    async def handled() -> int:
        return _handled(proc)
    await eventually(handled, lambda n: n >= target, timeout_s=60, what=f"{len(commands)} commands handled")


async def _produce(settings: Settings, commands: list[Command]) -> None:
    """Append ``commands`` to the commands topic in order, pipelined."""
    codec = CommandCodec()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True,
                                max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        await publish_schemas(settings, producer, {settings.commands_topic: codec.avro})
        sent = []
        for c in commands:  # send() queues in call order: one assessment's commands stay in order
            value, headers = codec.encode(CommandEnvelope(c, datetime.now(UTC)))
            sent.append(await producer.send(settings.commands_topic, value, key=c.assessment_id.encode(),
                                            headers=headers))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def _workload(prefix: str, n: int) -> list[Command]:
    """Lifecycles ending COMPLETED, FAILED, PROCESSING with progress, PENDING, CANCELLED-free; plus refusals."""
    out: list[Command] = []
    for i in range(n):
        aid = f"{prefix}-{i}"
        out += [Create(assessment_id=aid, request={"i": i}), Start(assessment_id=aid),
                UpdateProgress(assessment_id=aid, progress=i % 100, message=f"step {i}")]
        if i % 4 == 0:
            out.append(Complete(assessment_id=aid, result={"score": i}))
        elif i % 4 == 1:
            out.append(Fail(assessment_id=aid, error="boom", retryable=True))
        elif i % 4 == 2:
            out.append(Start(assessment_id=aid))  # refused: already PROCESSING
    out.append(Start(assessment_id=f"{prefix}-nobody"))  # refused: not found
    return out


async def _full_rebuild(settings: Settings) -> tuple[dict[str, object], set[str], int]:
    """The state, the idempotency window and the records read of a processor folding the whole log."""
    async with _processor(settings.model_copy(update={"processor_snapshots": False})) as full:
        assert full.stats.rebuilds["full"] == settings.partitions
        return dict(full.folded_state()), full.remembered_command_ids(), full.stats.rebuild_records_read


async def _write_state_records(settings: Settings, records: list[tuple[bytes, bytes, int | None]]) -> None:
    """Append (key, value, writer epoch) records to the state topic, beside the processor."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        from aiokafka.partitioner import DefaultPartitioner
        parts = list(range(settings.partitions))
        for key, value, epoch in records:
            aid = key.split(b":", 1)[1]
            headers = [("writer-epoch", str(epoch).encode())] if epoch is not None else []
            await producer.send_and_wait(state_topic(settings), value, key=key, headers=headers,
                                         partition=DefaultPartitioner()(aid, parts, parts))
    finally:
        await producer.stop()


async def test_restart_uses_the_snapshot_and_equals_the_full_rebuild(stack_settings: Settings) -> None:
    """A takeover loads the snapshot and folds only the log after its checkpoint (reading far fewer
    records than a full rebuild), and ends with exactly the full rebuild's states and command ids."""
    s = _settings(stack_settings)
    async with _processor(s) as first:
        await _send(s, first, _workload("a", 60))
        assert first.stats.snapshot_writes > 0 and first.stats.snapshot_bytes_written > 0
    # A tail after the checkpoint: written by a processor that keeps no snapshot.
    async with _processor(s.model_copy(update={"processor_snapshots": False})) as plain:
        await _send(s, plain, _workload("b", 3))
    async with _processor(s) as restarted:
        assert restarted.stats.rebuilds == {"snapshot": s.partitions}
        assert not restarted.stats.rebuild_fallbacks
        state, ids = dict(restarted.folded_state()), restarted.remembered_command_ids()
        snapshot_reads = restarted.stats.rebuild_records_read
    full_state, full_ids, full_reads = await _full_rebuild(s)
    assert state == full_state
    assert ids == full_ids
    assert len(ids) == len(_workload("a", 60)) + len(_workload("b", 3))
    assert state["a-0"] == (State.COMPLETED, 4)  # a terminal marker, not the whole state
    assert getattr(state["a-3"], "progress") == 3
    # About one record per assessment (plus chunks, checkpoints and the tail) against every event.
    assert snapshot_reads < full_reads * 0.6, (snapshot_reads, full_reads)


async def test_a_partial_snapshot_write_is_harmless(stack_settings: Settings) -> None:
    """States written after the last checkpoint (a crash before its checkpoint) hold newer versions:
    the takeover skips the events they cover and still equals the full rebuild."""
    s = _settings(stack_settings)
    async with _processor(s) as first:
        await _send(s, first, _workload("p", 12))
    async with _processor(s.model_copy(update={"processor_snapshots": False})) as plain:
        await _send(s, plain, [UpdateProgress(assessment_id=f"p-{i}", progress=99) for i in (2, 3, 6, 7)])
        newer = plain.folded_state()
    # What a crashed write would have left: the newer states, no checkpoint after them.
        await _write_state_records(s, [(f"a:p-{i}".encode(), encode_state(newer[f"p-{i}"]), None)  # type: ignore[arg-type]
                                   for i in (2, 3)])
    async with _processor(s) as restarted:
        assert restarted.stats.rebuilds == {"snapshot": s.partitions}
        state = dict(restarted.folded_state())
    assert state == (await _full_rebuild(s))[0]
    assert getattr(state["p-2"], "progress") == 99 and getattr(state["p-6"], "progress") == 99


async def test_corrupt_or_fenced_snapshot_record_means_full_rebuild(stack_settings: Settings) -> None:
    """An undecodable state record, or a fenced writer's record left latest of its key, is never
    used: that partition is folded from the whole log (counted), the result equals the full rebuild,
    and the rewritten snapshot serves the next takeover again."""
    s = _settings(stack_settings)
    async with _processor(s) as first:
        await _send(s, first, _workload("c", 12))
    await _write_state_records(s, [(b"a:c-1", b"\x00 not json", None)])
    async with _processor(s) as second:
        assert second.stats.rebuild_fallbacks == {"undecodable": 1}
        assert second.stats.rebuilds == {"full": 1, "snapshot": 1}
        state = dict(second.folded_state())
    assert state == (await _full_rebuild(s))[0]
    async with _processor(s) as third:  # the full rebuild wrote its states back: the snapshot is whole again
        assert third.stats.rebuilds == {"snapshot": s.partitions}
        assert dict(third.folded_state()) == state
    # A zombie's late write (epoch 1, below the fences since) as the latest record of its key.
    stale = state["c-2"]
    await _write_state_records(s, [(b"a:c-2", encode_state(stale), 1)])  # type: ignore[arg-type]
    async with _processor(s) as fourth:
        assert fourth.stats.rebuild_fallbacks == {"fenced_writer": 1}
        assert dict(fourth.folded_state()) == state


async def test_idempotency_window(stack_settings: Settings) -> None:
    """A re-sent command id inside the window, also across a restart from the snapshot, gets its
    original outcome (no event); past the window (``processor_idempotency_max_ids``) it is decided
    again as a new command: applied again, or refused when it carries ``expected_version``."""
    s = _settings(stack_settings, partitions=1, processor_idempotency_max_ids=5)
    progress = UpdateProgress(assessment_id="w-1", progress=10)
    guarded = UpdateProgress(assessment_id="w-2", progress=10, expected_version=1)
    async with _processor(s) as first:
        await _send(s, first, [Create(assessment_id="w-1", request={}), Create(assessment_id="w-2", request={}),
                               progress, guarded, progress])
        assert (first.stats.accepted, first.stats.duplicates) == (4, 1)
        assert progress.command_id in first.remembered_command_ids()
    async with _processor(s) as second:
        assert second.stats.rebuilds == {"snapshot": 1}
        await _send(s, second, [progress, guarded])  # still inside the window: duplicates
        assert (second.stats.accepted, second.stats.duplicates) == (0, 2)
        assert getattr(second.folded_state()["w-1"], "version") == 2
        # Five newer command ids push both out of the window.
        await _send(s, second, [Create(assessment_id=f"w-x{i}", request={}) for i in range(5)])

        async def remembered() -> set[str]:
            return second.remembered_command_ids()
        # Trimmed once the batch's appends are acknowledged, a moment after it was handled.
        ids = await eventually(remembered, lambda ids: progress.command_id not in ids, what="the id forgotten")
        assert len(ids) == 5 and guarded.command_id not in ids
        await _send(s, second, [progress, guarded])
        assert second.stats.duplicates == 2  # no more duplicates: decided again
        assert getattr(second.folded_state()["w-1"], "version") == 3  # applied a second time
        assert second.stats.rejected_by_type["VersionConflict"] == 1  # expected_version 1, now 2
    async with _processor(s) as third:  # the window survives the restart as it was
        assert len(third.remembered_command_ids()) == 5
        assert progress.command_id in third.remembered_command_ids()


async def test_terminal_marker_still_refuses_commands(stack_settings: Settings) -> None:
    """A completed assessment kept only as a terminal marker (state and version) refuses start and a
    second create with InvalidTransition, and a stale expected_version with VersionConflict, after a
    restart from the snapshot."""
    s = _settings(stack_settings, partitions=1)
    async with _processor(s) as first:
        await _send(s, first, [Create(assessment_id="t-1", request={"x": 1}), Start(assessment_id="t-1"),
                               Complete(assessment_id="t-1", result={})])
    async with _processor(s) as second:
        assert second.folded_state()["t-1"] == (State.COMPLETED, 3)
        await _send(s, second, [Start(assessment_id="t-1"), Create(assessment_id="t-1", request={}),
                                UpdateProgress(assessment_id="t-1", progress=5, expected_version=2)])
        assert second.stats.accepted == 0
        assert dict(second.stats.rejected_by_type) == {"InvalidTransition": 2, "VersionConflict": 1}


async def _latest_state_records(settings: Settings) -> dict[bytes, bytes | None]:
    """The latest accepted value of every key on the state topic (None: a tombstone), as a load reads it."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    latest: dict[bytes, bytes | None] = {}
    # earliest: with "latest", the reset assign() starts can land after scan_partition's seek.
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        for p in range(settings.partitions):
            tp = TopicPartition(state_topic(settings), p)
            consumer.assign([tp])
            latest.update((await scan_partition(consumer, tp, (await consumer.end_offsets([tp]))[tp])).values)
        return latest
    finally:
        await consumer.stop()


async def test_finished_assessments_are_packed_in_terminal_chunks(stack_settings: Settings) -> None:
    """Finished assessments leave their a: records for terminal chunks (many per record), small chunks
    are merged, an older snapshot's a: marker is moved into a chunk, and the restart still equals the full rebuild."""
    s = _settings(stack_settings, partitions=1)
    lifecycle: list[list[Command]] = [[Create(assessment_id=f"f-{i}", request={"i": i}), Start(assessment_id=f"f-{i}"),
                                       Complete(assessment_id=f"f-{i}", result={"ok": i})] for i in range(40)]
    async with _processor(s) as first:
        await _send(s, first, [c for cmds in lifecycle for c in cmds] + [Create(assessment_id="live-1", request={})])
        for i in range(20):  # one finish per batch, and so per snapshot write: small chunks, then a merge
            await _send(s, first, [Create(assessment_id=f"g-{i}", request={}), Start(assessment_id=f"g-{i}")])
            await _send(s, first, [Complete(assessment_id=f"g-{i}", result={})])
    latest = await _latest_state_records(s)
    live_keys = {k for k, v in latest.items() if k.startswith(b"a:") and v is not None}
    chunks = [k for k, v in latest.items() if k.startswith(b"t:") and v is not None]
    assert live_keys == {b"a:live-1"}, sorted(live_keys)[:10]
    assert 1 <= len(chunks) <= 16, chunks  # 20 small chunks were written: merged at 16
    # An older snapshot's terminal marker (one a: record per finished assessment), as a write before
    # terminal chunks left it: loaded, then moved into a chunk by the next write.
    await _write_state_records(s, [(b"a:f-3", encode_marker(State.COMPLETED, 3), None)])
    async with _processor(s) as second:
        assert second.stats.rebuilds == {"snapshot": 1} and not second.stats.rebuild_fallbacks
        state: dict[str, object] = dict(second.folded_state())
        assert state["f-3"] == (State.COMPLETED, 3) and state["g-19"] == (State.COMPLETED, 3)
        await _send(s, second, [Start(assessment_id="f-3"), UpdateProgress(assessment_id="live-1", progress=1,
                                                                          expected_version=1)])
        assert dict(second.stats.rejected_by_type) == {"InvalidTransition": 1}
    assert (await _latest_state_records(s))[b"a:f-3"] is None
    full_state, _, _ = await _full_rebuild(s)
    state["live-1"] = full_state["live-1"]  # the progress update sent above
    assert state == full_state


async def test_events_filling_several_record_batches_keep_their_order_and_offsets(stack_settings: Settings) -> None:
    """A fetch whose events overflow one record batch of a partition is appended in order, each event
    at the offset the processor counted for it, stamped with the instant it was decided."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from assessment_store.schemas import EventCodec

    s = _settings(stack_settings, partitions=1)
    # 48 commands of ~24 KiB wait on one partition before the processor starts: its first fetch takes
    # 1 MiB of them (the consumer's default per partition), whose events overflow a 512 KiB batch.
    commands: list[Command] = [Create(assessment_id=f"big-{i}", request={"pad": "x" * 24_000, "i": i})
                               for i in range(48)]
    async with _processor(s):
        pass  # the topics exist: the commands wait there, to be fetched together
    await _produce(s, commands)
    async with _processor(s) as proc:

        async def handled() -> int:
            return _handled(proc)
        await eventually(handled, lambda n: n >= len(commands), timeout_s=60, what="the commands handled")
        # 1.1 MiB of events cannot go in fewer than three 512 KiB batches, however they were fetched.
        assert proc.stats.event_batches >= 3
        tp = TopicPartition(s.events_topic, 0)
        consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            await consumer.seek_to_beginning(tp)
            records = []
            while not records or records[-1].offset + 1 < end:
                batch = await asyncio.wait_for(consumer.getmany(tp, timeout_ms=1000), 30)
                records += batch.get(tp, [])
        finally:
            await consumer.stop()
        # The processor's count of what it appended follows the log exactly (a gap would have
        # frozen it at None: streams/_snapshot.py, point 3).
        assert proc._parts[0].events_next == end  # noqa: SLF001 - the invariant under test
    codec = EventCodec()
    events = [(r, codec.decode(r.value, r.headers)) for r in records if r.value]
    assert [e.assessment_id for _, e in events] == [c.assessment_id for c in commands]
    for rec, ev in events:
        assert rec.timestamp == int(ev.recorded_at.timestamp() * 1000)
        assert ev.payload.request["pad"] == "x" * 24_000  # type: ignore[union-attr]
