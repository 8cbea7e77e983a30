"""The event loop of the store's processes (core/_loop.py): chosen by ASSESSMENT_STORE_EVENT_LOOP,
uvloop by default when installed, and the services run on it."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from importlib.machinery import ModuleSpec

import pytest

from assessment_store.core import Settings, loop_factory, run

pytest.importorskip("uvloop")


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_runs_on_uvloop_when_installed() -> None:
    """The default choice runs a coroutine on uvloop's loop when uvloop can be imported."""
    assert Settings().event_loop == "auto"
    assert run(_loop_module()).startswith("uvloop")


def test_asyncio_choice_runs_on_asyncios_own_loop() -> None:
    """event_loop=asyncio runs on the standard library's loop even with uvloop installed."""
    assert run(_loop_module(), "asyncio") == "asyncio.unix_events"


def test_auto_keeps_kafka_over_tls_on_asyncios_loop() -> None:
    """auto picks asyncio's loop when Kafka is reached over TLS (aiokafka on uvloop stalls there)."""
    assert loop_factory("auto", kafka_tls=True) is asyncio.new_event_loop
    assert loop_factory("uvloop", kafka_tls=True) is not asyncio.new_event_loop
    assert Settings(kafka_security_protocol="SASL_SSL").kafka_tls
    assert not Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_secure=False).kafka_tls


def test_auto_without_uvloop_falls_back_to_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto on a machine without uvloop gives asyncio's loop rather than failing."""
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> ModuleSpec | None:
        return None if name == "uvloop" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert loop_factory("auto") is asyncio.new_event_loop


def test_requiring_uvloop_without_it_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """event_loop=uvloop without uvloop is an ImportError naming the variable and the fix."""
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(ImportError, match="ASSESSMENT_STORE_EVENT_LOOP=uvloop.*pip install"):
        loop_factory("uvloop")


def test_an_unknown_choice_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt ASSESSMENT_STORE_EVENT_LOOP is a settings error naming the field."""
    monkeypatch.setenv("ASSESSMENT_STORE_EVENT_LOOP", "uv-loop")
    with pytest.raises(ValueError, match="event_loop"):
        Settings()


def test_the_command_line_runs_on_the_chosen_loop() -> None:
    """The CLI's runner (the one every service process starts through) honours the setting."""
    # cli._console.run_cli is private, but it is the one door every process of the stack goes
    # through, and its choice is what this checks (test_cli imports it for its exit codes too).
    code = ("import asyncio; from assessment_store.cli._console import run_cli\n"
            "async def f():\n    return type(asyncio.get_running_loop()).__module__\n"
            "print(run_cli(f()))")
    for choice, expected in (("auto", "uvloop"), ("asyncio", "asyncio")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env={"ASSESSMENT_STORE_EVENT_LOOP": choice, "PATH": ""})
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().startswith(expected), (choice, out.stdout)
