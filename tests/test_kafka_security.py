"""Kafka with authentication (``stack up --secure``) against a real broker: SASL_SSL with SCRAM,
TLS with the stack's own CA, and an ACL per principal.

One private secure stack (Kafka, PostgreSQL, processor, projector) for the module, on ports of its
own (the session's port base + 500), beside the session's plain stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import OffsetAndMetadata
from pydantic import SecretStr

from assessment_store import AssessmentStore, Settings, State
from assessment_store.core import (
    CommandEnvelope,
    Created,
    Event,
    KafkaAccessDenied,
    KafkaUnavailable,
    ServiceFailed,
    UpdateProgress,
    ValidationError,
    new_id,
)
from assessment_store.testing import eventually, isolated_settings
from assessment_store.schemas import CommandCodec
from assessment_store.stack import Stack
from assessment_store.stack._kafka import KafkaService
from assessment_store.stack._kafka_security import ensure_tls
from assessment_store.streams import CommandSender, Principal, kafka_client_options, translate_kafka_errors
from assessment_store.streams.testing import EventProducer
from assessment_store.migration._legacy_process import NODE_DIR
from assessment_store.streams._kafka import node_client_env, read_credentials

from .conftest import PORT_BASE, ROOT

pytestmark = pytest.mark.stack

SECURE_PORT_BASE = PORT_BASE + 500


@pytest.fixture(scope="module")
def secure() -> Iterator[Settings]:
    """A freshly purged secure stack: Kafka (SASL_SSL + ACLs), PostgreSQL, processor and projector."""
    settings = isolated_settings(
        ROOT / ".data" / f"test-secure-{SECURE_PORT_BASE}", port_base=SECURE_PORT_BASE, kafka_secure=True,
        visibility_timeout_s=20.0, command_timeout_s=20.0, consumer_session_timeout_ms=6000,
    )
    stack = Stack(settings)
    stack.purge(log=lambda _m: None)
    try:
        stack.up(["kafka", "postgres", "processor", "projector"], log=lambda _m: None)
        yield settings
    finally:
        stack.down(log=lambda _m: None)


def _as(settings: Settings, username: str, password: str | None = None) -> Settings:
    """``settings`` authenticating as ``username`` (with its real password unless one is given)."""
    update: dict[str, object] = {"kafka_username": username}
    if password is not None:
        update["kafka_password"] = SecretStr(password)
    return settings.model_copy(update=update)


def _event(aid: str) -> Event:
    now = datetime.now(UTC)
    return Event(aid, 1, Created({"forged": True}), now, now)


async def _read_all(settings: Settings, principal: Principal, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every record of ``topic``, read without a group as ``principal``."""
    consumer = AIOKafkaConsumer(**kafka_client_options(settings, principal), group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        await consumer.seek_to_beginning(*parts)
        records: list[tuple[bytes | None, bytes | None]] = []
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            for recs in (await consumer.getmany(timeout_ms=1000)).values():
                records += [(r.key, r.value) for r in recs]
        return records
    finally:
        await consumer.stop()


def test_tls_files_are_made_for_a_data_dir_of_any_length(tmp_path: Path) -> None:
    """A data dir path longer than X.509's 64-character common name still gets a CA and a broker key."""
    deep = tmp_path / ("d" * 100) / ("e" * 100)
    settings = isolated_settings(deep, port_base=SECURE_PORT_BASE, kafka_secure=True)
    files = ensure_tls(settings, deep / "tls")
    assert files.ca_cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" in files.broker_pem.read_text()


def test_secrets_are_owner_only(secure: Settings) -> None:
    """Credentials, broker key and server.properties are 0600, the Kafka data directory 0700, the CA certificate public."""
    home = secure.data_dir.resolve() / "kafka"
    for path in (secure.kafka_credentials_file, home / "tls" / "broker.pem", home / "tls" / "ca.key",
                 home / "server.properties"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "log-dirs").stat().st_mode) & 0o077 == 0
    assert b"PRIVATE KEY" not in secure.kafka_ca_file.read_bytes()
    creds = read_credentials(secure.kafka_credentials_file)
    assert {"admin", "processor", "client", "projector", "bridge", "reverse-sync", "dashboard", "legacy-tap"} <= set(creds)
    logs = "".join(p.read_text(errors="replace") for p in (secure.data_dir.resolve() / "logs").glob("*"))
    assert not [name for name, pw in creds.items() if pw in logs], "a password reached a log"


async def test_unauthenticated_client_is_refused(secure: Settings) -> None:
    """A PLAINTEXT client (no TLS, no SASL) gets nothing from the secure listener: not metadata, not a produce."""
    plain = secure.model_copy(update={"kafka_secure": False})
    with pytest.raises(KafkaUnavailable):
        await CommandSender(plain).start()
    producer = AIOKafkaProducer(bootstrap_servers=secure.kafka_bootstrap, request_timeout_ms=5000)
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()


async def test_wrong_password_and_unknown_user_are_refused(secure: Settings) -> None:
    """A wrong password, or a user the broker does not know, is a KafkaAccessDenied (authentication), never retriable."""
    for settings in (_as(secure, "client", "not-the-password"), _as(secure, "mallory", "whatever")):
        sender = CommandSender(settings)
        with pytest.raises(KafkaAccessDenied) as refused:
            await sender.start()
        assert refused.value.reason == "authentication" and not refused.value.retriable
        assert refused.value.principal == settings.kafka_username
        assert "not-the-password" not in str(refused.value)
        await sender.stop()


async def test_tls_verifies_the_broker_certificate(secure: Settings) -> None:
    """A client that does not trust the stack's CA (the system's CAs only) refuses the broker."""
    untrusting = secure.model_copy(update={"kafka_secure": False, "kafka_security_protocol": "SASL_SSL",
                                           "kafka_username": "client",
                                           "kafka_password": SecretStr(read_credentials(secure.kafka_credentials_file)["client"])})
    with pytest.raises(KafkaUnavailable):
        await CommandSender(untrusting).start()


async def test_client_writes_commands_but_never_events(secure: Settings) -> None:
    """The client principal may send a command; producing to the events topic is KafkaAccessDenied (authorization)."""
    sender = CommandSender(secure)
    try:
        aid = new_id()
        md = await sender.send(CommandEnvelope(UpdateProgress(assessment_id=aid, progress=1), datetime.now(UTC)))
        assert md.topic == secure.commands_topic
    finally:
        await sender.stop()
    forger = EventProducer(secure, principal="client")
    try:
        with pytest.raises(KafkaAccessDenied) as refused:
            await forger.append(_event(new_id()))
        assert refused.value.reason == "authorization" and refused.value.principal == "client"
        assert "TopicAuthorizationFailed" in refused.value.detail
    finally:
        await forger.stop()


async def test_dashboard_reads_but_never_writes(secure: Settings) -> None:
    """The dashboard principal reads the events topic, but may write no topic and commit no other group's offsets."""
    aid = new_id()
    writer = EventProducer(secure)  # the processor principal: the only writer of the log of record
    try:
        await writer.append(_event(aid))
    finally:
        await writer.stop()
    assert aid.encode() in {k for k, _v in await _read_all(secure, "dashboard", secure.events_topic)}

    for principal, topic in (("dashboard", secure.events_topic), ("dashboard", secure.commands_topic)):
        producer = AIOKafkaProducer(**kafka_client_options(secure, principal), acks="all", request_timeout_ms=10000)
        await producer.start()
        try:
            with pytest.raises(KafkaAccessDenied):
                with translate_kafka_errors(f"writing {topic}", principal):
                    value, headers = CommandCodec().encode(
                        CommandEnvelope(UpdateProgress(assessment_id=aid, progress=1), datetime.now(UTC)))
                    await producer.send_and_wait(topic, value, key=aid.encode(), headers=headers)
        finally:
            await producer.stop()

    # Moving the processor's committed offsets would make it skip commands: a write in disguise.
    consumer = AIOKafkaConsumer(**kafka_client_options(secure, "dashboard"), group_id=secure.processor_group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(secure.commands_topic, 0)
        consumer.assign([tp])
        with pytest.raises(KafkaAccessDenied):
            with translate_kafka_errors("committing the processor's offsets", "dashboard"):
                await asyncio.wait_for(consumer.commit({tp: OffsetAndMetadata(10**9, "")}), 20)
    finally:
        await consumer.stop()


async def test_write_round_trips_through_processor_and_projector(secure: Settings) -> None:
    """On the secure stack a write by the client principal is decided by the processor and folded by the projector."""
    async with AssessmentStore(secure) as store:
        aid = await store.create_assessment({"subject": "secure"})
        await store.start_assessment(aid)
        await store.complete_assessment(aid, {"score": 1})
        state = await eventually(lambda: store.get_state(aid), lambda a: a.state is State.COMPLETED,
                                 timeout_s=20, what="completion on the secure stack")
        assert state.version == 3
    for service in ("processor", "projector"):
        log = (secure.data_dir.resolve() / "logs" / f"{service}.log").read_text()
        assert f"Authenticated as {service} via SCRAM-SHA-512" in log


def test_a_data_directory_keeps_its_mode(secure: Settings) -> None:
    """A broker directory formatted with authentication refuses to start open (and the reverse)."""
    with pytest.raises(ServiceFailed, match="formatted for SASL_SSL"):
        KafkaService(secure.model_copy(update={"kafka_secure": False}))._check_mode()
    unset = secure.model_copy(update={"kafka_secure": None})
    assert unset.kafka_secure_mode, "an unset kafka_secure follows the data directory"
    KafkaService(unset)._check_mode()


def _node_tap(settings: Settings, env: dict[str, str], emitter: str, timeout_ms: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", "bin/legacy-service.js", "--count", "2", "--no-create-topic", "--brokers", settings.kafka_bootstrap,
         "--topic", settings.legacy_topic, "--emitter-id", emitter, "--timeout-ms", str(timeout_ms), "--log-level", "nothing"],
        cwd=NODE_DIR, env={**os.environ, **env}, capture_output=True, text=True, timeout=90,
    )


async def test_node_tap_authenticates_as_legacy_tap(secure: Settings) -> None:
    """The Node tap delivers as legacy-tap over SASL_SSL; with the dashboard's credentials its writes are refused."""
    emitter = f"secure-tap-{new_id()}"
    done = _node_tap(secure, node_client_env(secure, "legacy-tap"), emitter, 20000)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["tap"]["forwarded"] > 0
    emitters = {json.loads(v)["emitter"] for _k, v in await _read_all(secure, "dashboard", secure.legacy_topic) if v}
    assert emitter in emitters

    refused = _node_tap(secure, node_client_env(secure, "dashboard"), f"{emitter}-ro", 3000)
    assert refused.returncode == 1
    emitters = {json.loads(v)["emitter"] for _k, v in await _read_all(secure, "dashboard", secure.legacy_topic) if v}
    assert f"{emitter}-ro" not in emitters


def test_client_options_default_to_plaintext(tmp_path: Path) -> None:
    """Without security settings a client gets only the bootstrap servers; SASL without a password is refused early."""
    plain = Settings(data_dir=tmp_path, kafka_port=1234)
    assert kafka_client_options(plain, "client") == {"bootstrap_servers": "127.0.0.1:1234"}
    assert not plain.kafka_secure_mode
    with pytest.raises(ValidationError, match="kafka_password"):
        kafka_client_options(plain.model_copy(update={"kafka_security_protocol": "SASL_PLAINTEXT",
                                                      "kafka_username": "client"}), "client")
    env = node_client_env(plain.model_copy(update={"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_username": "u",
                                                   "kafka_password": SecretStr("p")}), "legacy-tap")
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT" and env["KAFKA_USERNAME"] == "u"
