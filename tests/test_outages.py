"""Clients during a dependency outage: every call ends by its timeout with a typed, retriable error,
and reads keep working while Kafka is down (they only need PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import asyncpg
import pytest

from assessment_store import AssessmentStore, CommandTimeout, DatabaseUnavailable, Settings, State
from assessment_store.testing import isolated_settings
from assessment_store.projections import translate_db_errors
from assessment_store.stack import KafkaService
from assessment_store.stack._procs import is_alive, wait_until

from .conftest import PORT_BASE

pytestmark = pytest.mark.stack

_DEAD_BROKER_PORT = PORT_BASE + 9
"""Nothing listens here (the session stack uses PORT_BASE..+2): a broker that is down."""


def _without_kafka(settings: Settings, port: int, timeout_s: float) -> Settings:
    return settings.model_copy(update={"bootstrap_servers": f"127.0.0.1:{port}", "command_timeout_s": timeout_s})


async def test_reads_work_and_writes_end_by_their_timeout_while_kafka_is_down(
    store: AssessmentStore, stack_settings: Settings
) -> None:
    """A client started while the broker is down reads PostgreSQL; a write ends in CommandTimeout by its deadline."""
    aid = await store.create_assessment({"outage": "reads"})
    await store.start_assessment(aid)

    async with AssessmentStore(_without_kafka(stack_settings, _DEAD_BROKER_PORT, 2.0)) as offline:
        assert (await offline.get_state(aid)).state is State.PROCESSING
        assert [h["version"] for h in await offline.get_history(aid)] == [1, 2]
        assert len(await offline.list_assessments(limit=3)) == 3  # a page, from PostgreSQL alone
        assert await offline.get_assessment_count() >= 1

        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(CommandTimeout, match="broker") as caught:
            await offline.update_progress(aid, 10, "while Kafka is down")
        assert loop.time() - began < 2.0 + 1.5
        assert caught.value.retriable and caught.value.assessment_id == aid
    assert (await store.get_state(aid)).version == 2  # nothing reached the log


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[KafkaService]:
    """A broker of this test's own (the session's broker must stay up for the other tests)."""
    own = isolated_settings(tmp_path / "data", port_base=PORT_BASE + 400)
    kafka = KafkaService(own)
    kafka.start(log=lambda _m: None)
    yield kafka
    kafka.stop()


async def test_a_running_client_is_not_held_past_its_timeout_when_the_broker_dies(
    stack_settings: Settings, private_broker: KafkaService
) -> None:
    """After kill -9 of the broker under a connected client, each write ends in CommandTimeout within its timeout."""
    settings = _without_kafka(stack_settings, private_broker.settings.kafka_port, 3.0)
    async with AssessmentStore(settings) as client:
        # No processor serves this broker: the write reaches Kafka, then waits in vain for an outcome. A broker
        # just started may not acknowledge within 3 s on a loaded machine (its partitions' leaders are still being
        # elected): until one write is acknowledged, the client is not yet "connected" (at most 5 tries).
        for attempt in range(5):
            with pytest.raises(CommandTimeout) as first:
                await client.create_assessment({"outage": "broker", "attempt": attempt})
            if "command processor" in str(first.value):
                break
        assert "command processor" in str(first.value), first.value

        pid = private_broker.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not is_alive(pid), timeout_s=10)

        loop = asyncio.get_running_loop()
        for _ in range(3):
            began = loop.time()
            with pytest.raises(CommandTimeout) as caught:
                await client.create_assessment({"outage": "broker down"})
            assert loop.time() - began < 3.0 + 1.5, "a write was held past its timeout"
            assert caught.value.retriable


def test_client_side_driver_errors_become_retriable_store_errors() -> None:
    """asyncpg's InternalClientError and a shutdown SQLSTATE become DatabaseUnavailable, marked retriable."""
    for raised in (asyncpg.exceptions.InternalClientError("another operation is in progress"),
                   asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command")):
        with pytest.raises(DatabaseUnavailable) as caught, translate_db_errors("reading"):
            raise raised
        assert caught.value.retriable and caught.value.__cause__ is raised
    with pytest.raises(DatabaseUnavailable) as caught, translate_db_errors("writing"):
        raise asyncpg.exceptions.UniqueViolationError("duplicate key")
    assert not caught.value.retriable


async def test_concurrent_first_writes_start_one_producer(
    stack_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh client's first writes, sent concurrently, share one producer (the lazy start is not raced)."""
    from assessment_store.streams import _kafka

    made: list[object] = []
    real = _kafka.idempotent_producer

    def counting(*args: Any, **kwargs: Any) -> Any:
        made.append(producer := real(*args, **kwargs))
        return producer

    monkeypatch.setattr(_kafka, "idempotent_producer", counting)
    async with AssessmentStore(stack_settings) as client:
        ids = await asyncio.gather(*(client.create_assessment({"concurrent": i}) for i in range(8)))
    assert len(set(ids)) == 8
    assert len(made) == 1
