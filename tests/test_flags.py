"""Migration flags on a compacted topic (``bridge.FlagStore``) against the session's real Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from assessment_store import Settings, ValidationError
from assessment_store.migration import FlagChange, FlagStore, MigrationFlags, audit_trail
from assessment_store.projections import connect
from assessment_store.streams import partition_counts

pytestmark = pytest.mark.stack


def _topic() -> str:
    # A topic per test: each test starts from the default flags and sees only its own history.
    return f"test.migration-flags.{uuid.uuid4().hex[:12]}"


async def test_update_reaches_another_instance_within_one_second(stack_settings: Settings) -> None:
    """An update on one FlagStore is folded by a second running instance within 1 s (measured)."""
    topic = _topic()
    async with FlagStore(stack_settings, topic=topic) as a, FlagStore(stack_settings, topic=topic) as b:
        loop = asyncio.get_running_loop()
        seen: asyncio.Future[tuple[float, FlagChange]] = loop.create_future()
        b.subscribe(lambda change: seen.done() or seen.set_result((loop.time(), change)))
        t0 = loop.time()
        await a.update("alice", migration_percentage=30, enable_assessment_store=True, enable_dual_mode=True)
        seen_at, change = await asyncio.wait_for(seen, timeout=5.0)
        elapsed = seen_at - t0
        print(f"flag propagation: {elapsed * 1000:.1f} ms")
        assert elapsed <= 1.0, f"propagation took {elapsed:.3f} s"
        assert change.actor == "alice" and change.version == 1
        assert b.current() == MigrationFlags(enable_assessment_store=True, migration_percentage=30.0,
                                             enable_dual_mode=True)
        assert a.current() == b.current()


async def test_history_lists_changes_in_order_with_old_and_new(stack_settings: Settings) -> None:
    """history() returns every change in order with actor, old/new values, versions 1..n and the full flags."""
    topic = _topic()
    async with FlagStore(stack_settings, topic=topic) as a, FlagStore(stack_settings, topic=topic) as b:
        await a.update("alice", enableAssessmentStore=True)
        await b.update("bob", migration_percentage=5)
        await a.update("carol", migration_percentage=10, enable_dual_mode=True)
        history = await b.history()
    assert [(c.version, c.actor) for c in history] == [(1, "alice"), (2, "bob"), (3, "carol")]
    assert history[0].old == {"enableAssessmentStore": False} and history[0].new == {"enableAssessmentStore": True}
    assert history[1].old == {"migrationPercentage": 0.0} and history[1].new == {"migrationPercentage": 5.0}
    assert history[2].new == {"migrationPercentage": 10.0, "enableDualMode": True}
    # b's update was computed on top of a's: serialized updates lose nothing.
    assert history[2].flags == MigrationFlags(enable_assessment_store=True, migration_percentage=10.0,
                                              enable_dual_mode=True)
    assert [c.offset for c in history] == sorted(c.offset for c in history if c.offset is not None)


async def test_concurrent_updates_of_different_flags_both_survive(stack_settings: Settings) -> None:
    """Two instances updating different flags at the same time: the final flags hold both changes."""
    topic = _topic()
    async with FlagStore(stack_settings, topic=topic) as a, FlagStore(stack_settings, topic=topic) as b:
        await asyncio.gather(a.update("alice", enable_metrics=False), b.update("bob", enable_audit_logging=False))
        async with FlagStore(stack_settings, topic=topic) as c:
            assert not c.current().enable_metrics and not c.current().enable_audit_logging
            assert c.version == 2


async def test_update_leaves_an_audit_row(stack_settings: Settings) -> None:
    """Each update writes a flags_update row in public.migration_audit with who, old, new and the full flags."""
    topic = _topic()
    async with FlagStore(stack_settings, topic=topic) as a:
        await a.update("auditor", migration_percentage=12.5)
    conn = await connect(stack_settings)
    try:
        rows = await conn.fetch(
            "SELECT actor, details FROM public.migration_audit WHERE operation = 'flags_update'"
            " AND details->>'topic' = $1", topic)
    finally:
        await conn.close()
    assert len(rows) == 1
    assert rows[0]["actor"] == "auditor"
    details = rows[0]["details"]
    assert details["old"] == {"migrationPercentage": 0.0} and details["new"] == {"migrationPercentage": 12.5}
    assert details["flags"]["migrationPercentage"] == 12.5
    assert any(r["details"].get("topic") == topic for r in await audit_trail(stack_settings))


async def test_invalid_values_are_refused_and_nothing_is_written(stack_settings: Settings) -> None:
    """percentage 150, a non-bool flag, an unknown flag or a blank salt raise ValidationError naming the field."""
    topic = _topic()
    async with FlagStore(stack_settings, topic=topic) as a:
        cases = [({"migration_percentage": 150}, "migration_percentage"),
                 ({"migrationPercentage": float("nan")}, "migration_percentage"),
                 ({"enable_dual_mode": "yes"}, "enable_dual_mode"),
                 ({"routing_salt": "  "}, "routing_salt"),
                 ({"enable_everything": True}, "enable_everything")]
        for changes, field in cases:
            with pytest.raises(ValidationError) as info:
                await a.update("mallory", **changes)
            assert info.value.field == field
        assert a.version == 0 and a.current() == MigrationFlags()
        assert await a.history() == []


async def test_a_late_instance_starts_with_the_latest_flags(stack_settings: Settings) -> None:
    """A FlagStore started after the updates returns from start() with the latest flags folded."""
    topic = _topic()
    async with FlagStore(stack_settings, topic=topic) as a:
        await a.update("alice", migration_percentage=50, routing_salt="rollout-2")
    async with FlagStore(stack_settings, topic=topic) as late:
        assert late.current().migration_percentage == 50.0 and late.current().routing_salt == "rollout-2"


async def test_topic_is_compacted_with_one_partition(stack_settings: Settings) -> None:
    """The flags topic is created with one partition (one total order) and cleanup.policy=compact."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from assessment_store.streams._kafka import admin_client

    topic = _topic()
    async with FlagStore(stack_settings, topic=topic):
        pass
    assert (await partition_counts(stack_settings, [topic]))[topic] == 1
    async with admin_client(stack_settings) as admin:
        described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    configs = {name: value for name, value, *_ in described[0].resources[0][4]}
    assert configs["cleanup.policy"] == "compact"


async def test_start_and_stop_are_idempotent(stack_settings: Settings) -> None:
    """start() and stop() may be called twice; a stopped store refuses updates with a clear error."""
    store = FlagStore(stack_settings, topic=_topic())
    await store.start()
    await store.start()
    await store.stop()
    await store.stop()
    with pytest.raises(RuntimeError, match="not started"):
        await store.update("x", enable_metrics=False)
