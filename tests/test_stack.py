"""The stack manager against real processes: idempotent up, data kept across down/up, nothing left behind."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from assessment_store import DownloadFailed, MissingTool, PortInUse, Settings
from assessment_store.testing import isolated_settings
from assessment_store.projections import connect
from assessment_store.stack import Stack
from assessment_store.stack._procs import check_port_free, is_alive

from .conftest import PORT_BASE, ROOT

pytestmark = pytest.mark.stack


@pytest.fixture
def own_stack() -> Settings:
    """A second, private stack (ports and data dir of its own), purged before and after."""
    settings = isolated_settings(ROOT / ".data" / f"test-stack-{PORT_BASE}", port_base=PORT_BASE + 100)
    Stack(settings).purge(log=lambda _m: None)
    yield settings  # type: ignore[misc]
    Stack(settings).purge(log=lambda _m: None)


async def _write_marker(settings: Settings) -> None:
    conn = await connect(settings)
    try:
        await conn.execute(
            "INSERT INTO public.migration_audit (operation, actor, details) VALUES ('marker', 'test', $1)",
            {"kept": True},
        )
    finally:
        await conn.close()


async def _read_marker(settings: Settings) -> int:
    conn = await connect(settings)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM public.migration_audit WHERE operation = 'marker'"))
    finally:
        await conn.close()


def test_up_is_idempotent_down_leaves_nothing_and_data_survives(own_stack: Settings) -> None:
    """A second up starts nothing; down stops every process; data written before down is there after up."""
    stack = Stack(own_stack)
    assert stack.up(log=lambda _m: None) == {"kafka": True, "postgres": True, "processor": True, "projector": True, "bridge": True}
    first = {s.name: s.pid for s in stack.status()}
    assert all(first.values())

    assert stack.up(log=lambda _m: None) == {"kafka": False, "postgres": False, "processor": False, "projector": False, "bridge": False}
    assert {s.name: s.pid for s in stack.status()} == first  # still exactly one of each

    asyncio.run(_write_marker(own_stack))
    stack.down(log=lambda _m: None)
    assert not any(s.running for s in stack.status())
    for pid in first.values():
        assert not is_alive(pid), f"pid {pid} survived `down`"
    for port in (own_stack.kafka_port, own_stack.kafka_controller_port, own_stack.postgres_port):
        check_port_free("127.0.0.1", port, "test")  # raises PortInUse if anything still listens

    stack.up(log=lambda _m: None)
    assert asyncio.run(_read_marker(own_stack)) == 1
    stack.down(log=lambda _m: None)


def test_port_in_use_names_port_and_holder(tmp_path: Path) -> None:
    """Starting Kafka on a taken port fails with PortInUse naming the port and the holding process."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        settings = isolated_settings(tmp_path / "data", port_base=PORT_BASE + 200, kafka_port=port)
        with pytest.raises(PortInUse) as info:
            Stack(settings).kafka.start(log=lambda _m: None)
    assert info.value.port == port
    assert info.value.holder is not None and f"pid {os.getpid()}" in info.value.holder
    assert str(port) in str(info.value)


def test_missing_java_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without java on PATH, starting Kafka raises MissingTool with an install hint."""
    monkeypatch.setenv("PATH", str(tmp_path))
    settings = isolated_settings(tmp_path / "data", port_base=PORT_BASE + 300)
    with pytest.raises(MissingTool) as info:
        Stack(settings).kafka.start(log=lambda _m: None)
    assert info.value.tool == "java"
    assert "apt-get install" in str(info.value)


def test_undownloadable_kafka_version_fails_with_mvn_output(tmp_path: Path) -> None:
    """A Kafka version Maven cannot resolve raises DownloadFailed with the tail of mvn's output,
    and leaves no half-filled jar directory behind."""
    settings = isolated_settings(tmp_path / "data", port_base=PORT_BASE + 300, kafka_version="0.0.0-no-such",
                                 cache_dir=tmp_path / "cache")
    with pytest.raises(DownloadFailed) as info:
        Stack(settings).kafka.ensure_jars(log=lambda _m: None)
    assert "0.0.0-no-such" in str(info.value)
    assert info.value.log_tail.strip()
    assert not (tmp_path / "cache" / "kafka-0.0.0-no-such" / "libs").exists()


def test_kraft_cluster_ids_never_look_like_options() -> None:
    """Generated KRaft cluster ids are 22 URL-safe base64 characters and never start with '-'."""
    from assessment_store.stack._kafka import _kraft_cluster_id

    ids = [_kraft_cluster_id() for _ in range(5000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_kafka_data_is_private_to_its_account(stack_settings: Settings) -> None:
    """The broker's data directory is 0700; no segment, index, checkpoint or service log is readable by other accounts."""
    home = stack_settings.data_dir.resolve() / "kafka"
    assert home.stat().st_mode & 0o777 == 0o700
    files = [p for p in (home / "log-dirs").rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in files), "no segment found: is the session broker running?"
    exposed = [f"{p} {p.stat().st_mode & 0o777:o}" for p in files if p.stat().st_mode & 0o077]
    assert not exposed, exposed
    logs = [p for p in (stack_settings.data_dir.resolve() / "logs").rglob("*") if p.is_file()]
    assert any(p.name == "processor.log" for p in logs)
    readable = [f"{p} {p.stat().st_mode & 0o777:o}" for p in logs if p.stat().st_mode & 0o077]
    assert not readable, readable
