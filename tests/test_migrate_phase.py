"""``migrate status`` shows the migration's phase, derived from the flags, the rollout, the latest validation and the
cleanup's audit row."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest

from assessment_store import Settings
from assessment_store.migration import (
    FlagStore, MigrationFlags, RolloutState, ValidationRun, ValidationVerdict, derive_phase,
)
from assessment_store.stack import settings_env


def _run(verdict: ValidationVerdict) -> ValidationRun:
    now = datetime.now(UTC)
    return ValidationRun(7, "after", verdict, now, now, "http://legacy", "", 64, 10, 10, {})


def test_phase_follows_flags_rollout_validation_and_cleanup() -> None:
    """Everything on legacy is preparation; a share on the store dual mode; 100 % full migration until a validation
    passes with no rollout running, then cleanup; a cleanup audit row makes it done; a rollback returns to preparation."""
    none = RolloutState()
    legacy = MigrationFlags()
    part = MigrationFlags(enable_assessment_store=True, enable_dual_mode=True, migration_percentage=25)
    full = MigrationFlags(enable_assessment_store=True, enable_dual_mode=True, migration_percentage=100)
    passed, failed = _run(ValidationVerdict.PASS), _run(ValidationVerdict.FAIL)
    assert derive_phase(legacy, none, None, None)[0] == "preparation"
    assert derive_phase(legacy, RolloutState(status="rolled_back"), passed, None) == (
        "preparation", "every call on legacy: the last rollout was rolled back")
    assert derive_phase(part, RolloutState(status="running"), None, None)[0] == "dual mode"
    assert derive_phase(full, RolloutState(status="running"), passed, None)[0] == "full migration"
    assert derive_phase(full, RolloutState(status="complete"), None, None)[0] == "full migration"
    assert derive_phase(full, RolloutState(status="complete"), failed, None)[0] == "full migration"
    assert derive_phase(full, RolloutState(status="complete"), passed, None)[0] == "cleanup"
    assert derive_phase(full.replace(enable_dual_mode=False), none, passed, datetime.now(UTC))[0] == "done"


def _status(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "assessment_store.cli", "migrate", "status", *args],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.stack
async def test_status_shows_the_phase_validation_and_reverse_sync(stack_settings: Settings) -> None:
    """On fresh flags and rollout topics status says preparation; with 40 % on the store, dual mode; --json carries the
    phase, the flags, the latest validation and the reverse sync's lag beside the rollout's fields."""
    tag = uuid.uuid4().hex[:10]
    topics = ("--flags-topic", f"test.phase-flags.{tag}", "--rollout-topic", f"test.phase-rollout.{tag}")
    first = await asyncio.to_thread(_status, stack_settings, "--json", *topics)
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert doc["phase"] == "preparation" and doc["status"] is None and doc["cleanupAt"] is None
    assert {"validation", "reverseSync", "flags", "decisions"} <= set(doc)
    assert doc["reverseSync"] is None or doc["reverseSync"]["behind"] >= 0
    async with FlagStore(stack_settings, topic=f"test.phase-flags.{tag}") as flags:
        await flags.update("test", enable_assessment_store=True, enable_dual_mode=True, migration_percentage=40)
    text = await asyncio.to_thread(_status, stack_settings, *topics)
    assert text.returncode == 0, text.stderr
    assert "phase: dual mode (40 % of calls on the store)" in text.stdout
    assert "latest validation:" in text.stdout and "no rollout has started" in text.stdout
