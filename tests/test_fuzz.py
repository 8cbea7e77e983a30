"""Fuzzing the two doors hostile input comes through, against the session's real services, each bounded in time:
the HTTP API (schemathesis from /openapi.json) and the legacy topic (random and mutated legacy messages)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import pytest

from assessment_store import AssessmentStore, Settings
from assessment_store.testing import eventually
from assessment_store.bridge import BridgeOptions, TranslateLimits, dead_letters, parse_message
from assessment_store.bridge._legacy import Rejection
from assessment_store.projections import connect
from assessment_store.stack import Stack, settings_env
from assessment_store.streams import ensure_topics

from .test_bridge import _group_caught_up, _legacy, _produce, _quiescent, _start_bridge

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "fuzz-token-" + "f" * 32
FUZZ_SECONDS = 45


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _services_running(settings: Settings) -> None:
    rows = await asyncio.to_thread(Stack(settings).status)
    assert all(r.running for r in rows), [(r.name, r.running) for r in rows]


async def _a_normal_write_works(settings: Settings) -> None:
    async with AssessmentStore(settings) as store:
        aid = await store.create_assessment({"after": "fuzzing"})
        await store.start_assessment(aid)
        done = await store.complete_assessment(aid, {"ok": True})
    assert (done.state.value, done.version) == ("COMPLETED", 3)


async def test_schemathesis_finds_no_server_error_and_the_services_survive(stack_settings: Settings, tmp_path: Path) -> None:
    """Schemathesis, driven by /openapi.json with the token, gets no 5xx from `assessment-store serve` in its time
    budget; afterwards the server, the processor and the projector all still serve a normal write."""
    port = _free_port()
    env = {**os.environ, **settings_env(stack_settings), "ASSESSMENT_STORE_API_TOKEN": TOKEN,
           "ASSESSMENT_STORE_API_PORT": str(port), "ASSESSMENT_STORE_API_MAX_WAIT_S": "0.5"}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "assessment_store.cli", "serve"], env=env, cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        async def up() -> bool:
            try:
                async with httpx.AsyncClient() as c:
                    return (await c.get(f"{base}/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(up, bool, timeout_s=60, what="the API answering /healthz")
        st = Path(sys.executable).with_name("schemathesis")
        fuzz = await asyncio.to_thread(
            subprocess.run,
            [str(st), "run", f"{base}/openapi.json", "--checks", "not_a_server_error",
             "-H", f"Authorization: Bearer {TOKEN}", "--generation-with-security-parameters", "false",
             "--max-time", str(FUZZ_SECONDS), "--max-examples", "40", "--workers", "1", "--request-timeout", "20",
             "--generation-deterministic", "--no-color", "--report", "junit",
             "--report-junit-path", str(tmp_path / "junit.xml"),
             "--phases", "examples,coverage,fuzzing"],
            capture_output=True, text=True, timeout=FUZZ_SECONDS + 120, cwd=tmp_path,
        )
        report = fuzz.stdout[-6000:] + fuzz.stderr[-2000:]
        assert fuzz.returncode == 0, report
        # It did test: every operation of the document (13) got cases.
        operations = ET.parse(tmp_path / "junit.xml").getroot().iter("testcase")
        assert sum(1 for _ in operations) >= 13, report
        assert server.poll() is None, "the API process exited"
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
            r = await api.post("/assessments", json={"request": {"after": "schemathesis"}})
            assert r.status_code == 201, r.text
            aid = r.json()["assessmentId"]
            assert (await api.post(f"/assessments/{aid}/start", json={})).status_code == 200
            assert (await api.get(f"/assessments/{aid}")).json()["version"] == 2
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    await _services_running(stack_settings)
    await _a_normal_write_works(stack_settings)


# --- the legacy topic -----------------------------------------------------------------------------------------------

_EVENTS = ("created", "started", "progress", "completed", "failed", "cancelled")
_NASTY: list[Any] = [
    None, True, 0, -1, 2**31, 2**63, 2**64, -(2**63) - 1, 1e308, -0.0, 0.5, "", " ", "\u0000", "a\u0000b",
    "\ud800", "\udfff\ud800", "x" * 20_000, "\u202e\u0000", [], {}, [[[[[]]]]], {"\u0000": 1}, "pending",
    "archived", "2024-13-45T99:99:99Z", "2024-05-01T12:00:00Z",
]


def _deep(levels: int) -> Any:
    doc: Any = "bottom"
    for _ in range(levels):
        doc = {"d": doc}
    return doc


class _Mutator:
    """Valid legacy messages of a few assessments, and mutations of them: field values swapped for nasty ones,
    fields dropped, documents nested deep, bytes flipped, cut or inserted, or plain random bytes."""

    def __init__(self, rng: random.Random, prefix: str) -> None:
        self.rng = rng
        self.ids = [f"{prefix}-{i}" for i in range(12)]
        self.seq = 0

    def valid(self) -> dict[str, Any]:
        self.seq += 1
        event = self.rng.choice(_EVENTS)
        data: dict[str, Any] = {"request": {"n": self.rng.randrange(1000)}} if event == "created" else {}
        if event == "progress":
            data["progress"] = self.rng.randrange(101)
            data["message"] = "p"
        if event == "completed":
            data.update(result={"score": self.rng.random()}, duration=self.rng.randrange(10_000))
        if event == "failed":
            data["error"] = "e"
        return json.loads(_legacy(event, self.rng.choice(self.ids), self.seq, emitter="fuzz", **data))

    def structured(self) -> bytes:
        m = self.valid()
        for _ in range(self.rng.randint(1, 3)):
            target = m if self.rng.random() < 0.3 else m["data"]
            if not isinstance(target, dict):
                break
            key = self.rng.choice([*target.keys(), "request", "result", "duration", "progress", "error", "message"])
            roll = self.rng.random()
            if roll < 0.15:
                target.pop(key, None)
            elif roll < 0.25:
                target[key] = _deep(self.rng.choice((63, 65, 200, 900)))
            else:
                target[key] = self.rng.choice(_NASTY)
        return json.dumps(m, ensure_ascii=self.rng.random() < 0.5).encode("utf-8", "surrogatepass")

    def bytewise(self) -> bytes:
        raw = bytearray(json.dumps(self.valid()).encode())
        for _ in range(self.rng.randint(1, 4)):
            i = self.rng.randrange(len(raw))
            match self.rng.randrange(3):
                case 0:
                    raw[i] = self.rng.randrange(256)
                case 1:
                    del raw[i:i + self.rng.randint(1, 8)]
                case _:
                    raw[i:i] = self.rng.choice([b"\\u0000", b"\\ud800", b"\xff", b"[", b"9" * 30, b"NaN", b'"'])
        return bytes(raw)

    def message(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.25:
            return json.dumps(self.valid()).encode()
        if roll < 0.65:
            return self.structured()
        if roll < 0.95:
            return self.bytewise()
        return self.rng.randbytes(self.rng.randint(0, 64))


async def _outcomes(settings: Settings, command_ids: list[str]) -> set[str]:
    conn = await connect(settings)
    try:
        rows = await conn.fetch("SELECT command_id FROM projection.command_outcomes WHERE command_id = ANY($1::text[])",
                                command_ids)
    finally:
        await conn.close()
    return {r["command_id"] for r in rows}


async def test_random_and_mutated_legacy_messages_are_each_applied_or_dead_lettered(stack_settings: Settings) -> None:
    """600 random and mutated legacy messages: each is either translated (its command has an outcome, accepted or
    refused) or dead-lettered with a reason; applied + dead-lettered == sent, and the bridge is still running."""
    run_id = uuid.uuid4().hex[:8]
    settings = stack_settings.model_copy(update={"legacy_topic": f"legacy.assessment-events.fuzz{run_id}"})
    await ensure_topics(settings)
    # A fixed generator state, so a failure is reproducible with the same messages.
    mutator = _Mutator(random.Random(90_210), f"fuzz-{run_id}")
    values = [mutator.message() for _ in range(600)]
    options = BridgeOptions(group_id=f"bridge-fuzz-{run_id}", max_message_bytes=64 * 1024)
    running = await _start_bridge(settings, options)
    try:
        positions = await _produce(settings, [(None, v) for v in values])
        await eventually(lambda: _group_caught_up(settings, options.group_id, settings.legacy_topic), bool,
                         timeout_s=60, what="the bridge consuming every fuzzed message")
        assert not running.task.done(), "the bridge stopped"
        stats = running.bridge.stats
        assert stats.messages == len(values)
        assert stats.translated + stats.dead_lettered == len(values)

        letters = {d.source: d for d in await dead_letters(settings, limit=10_000)}
        dead = {f"{settings.legacy_topic}/{p}/{o}" for p, o in positions} & set(letters)
        assert len(dead) == stats.dead_lettered and len(letters) == stats.dead_lettered
        assert all(letters[s].reason and letters[s].kind for s in dead)

        await _quiescent(settings, "processor and projector handled the fuzzed commands")
        translated: list[str] = []
        for (p, o), value in zip(positions, values):
            if f"{settings.legacy_topic}/{p}/{o}" in dead:
                continue
            parsed = parse_message(value, TranslateLimits(options.max_message_bytes, settings.max_request_bytes))
            assert not isinstance(parsed, Rejection), (value[:200], parsed)
            translated.append(parsed.command_id)
        assert len(translated) == stats.translated
        missing = set(translated) - await _outcomes(settings, translated)
        assert not missing, f"{len(missing)} translated messages have no outcome"
        assert 0 < stats.dead_lettered < len(values) and stats.translated > 0
    finally:
        stopped_early = running.task.done()
        await running.close()
    assert not stopped_early
    await _services_running(stack_settings)
    await _a_normal_write_works(stack_settings)
