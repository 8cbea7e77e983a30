"""The command line, run as a user would run it, against the session's stack."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from assessment_store import Settings
from assessment_store.stack import settings_env

pytestmark = pytest.mark.stack


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "assessment_store.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_drives_a_lifecycle_with_json_output(stack_settings: Settings) -> None:
    """create, start, progress, complete, get --json and wait print the states the projection holds."""
    created = _cli(stack_settings, "create", "--request", '{"subject": "cli"}', "--json")
    assert created.returncode == 0, created.stderr
    aid = json.loads(created.stdout)["assessmentId"]
    for args in (("start", aid), ("progress", aid, "50", "--message", "half"),
                 ("complete", aid, "--result", '{"score": 1}')):
        r = _cli(stack_settings, *args)
        assert r.returncode == 0, r.stderr
    got = json.loads(_cli(stack_settings, "get", aid, "--json").stdout)
    assert (got["assessmentId"], got["state"], got["version"], got["message"], got["resultData"]) == (
        aid, "COMPLETED", 4, "half", {"score": 1}
    )
    assert json.loads(_cli(stack_settings, "wait", aid, "--timeout", "5", "--json").stdout)["state"] == "COMPLETED"


def test_cli_errors_are_clear_and_non_zero(stack_settings: Settings) -> None:
    """Bad JSON (65), an unknown id and an illegal transition (1), a wait timeout (3) and a usage error (64)
    each exit with their own code and a message."""
    bad = _cli(stack_settings, "create", "--request", "{nope")
    assert bad.returncode == 65 and "--request is not valid JSON" in bad.stderr
    missing = _cli(stack_settings, "get", "no-such-id")
    assert missing.returncode == 1 and "'no-such-id' does not exist" in missing.stderr
    aid = json.loads(_cli(stack_settings, "create", "--json").stdout)["assessmentId"]
    illegal = _cli(stack_settings, "complete", aid)
    assert illegal.returncode == 1 and "is PENDING" in illegal.stderr and "'complete'" in illegal.stderr
    timeout = _cli(stack_settings, "wait", aid, "--timeout", "0.2")
    assert timeout.returncode == 3 and "0.2 s" in timeout.stderr
    usage = _cli(stack_settings, "create", "--no-such-option")
    assert usage.returncode == 64 and "No such option" in usage.stderr


def test_stack_status_reports_pids_and_ports(stack_settings: Settings) -> None:
    """`stack status --json` lists the five services running, with pids and addresses."""
    r = _cli(stack_settings, "stack", "status", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) == {"kafka", "postgres", "processor", "projector", "bridge"}
    assert all(row["running"] and row["pid"] for row in rows.values())
    assert str(stack_settings.kafka_port) in rows["kafka"]["address"]
    assert str(stack_settings.postgres_port) in rows["postgres"]["address"]


def test_flags_cli_sets_shows_audits_and_rolls_back(stack_settings: Settings) -> None:
    """`flags set/show/history --audit/rollback` change and report the migration flags; a bad value
    exits non-zero naming the field."""
    r = _cli(stack_settings, "flags", "set", "migrationPercentage=25", "enableAssessmentStore=true",
             "enableDualMode=true", "--actor", "cli-test", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["migrationPercentage"] == 25
    shown = json.loads(_cli(stack_settings, "flags", "show", "--json").stdout)
    assert (shown["migrationPercentage"], shown["enableAssessmentStore"]) == (25, True)
    audit = json.loads(_cli(stack_settings, "flags", "history", "--audit", "--json").stdout)
    assert any("cli-test" in json.dumps(row) for row in audit)
    bad = _cli(stack_settings, "flags", "set", "migrationPercentage=150")
    assert bad.returncode != 0 and "migration_percentage" in bad.stderr
    rollback = _cli(stack_settings, "flags", "rollback", "--actor", "cli-test", "--json")
    back = json.loads(rollback.stdout)
    assert (back["enableAssessmentStore"], back["enableDualMode"]) == (False, False)
    # Moving traffic to legacy says whether the reverse sync is there (the session runs none).
    assert "reverse sync (group assessment-store-reverse-sync) is NOT running" in rollback.stderr


async def test_reverse_sync_runs_as_an_opt_in_stack_service(stack_settings: Settings) -> None:
    """`stack up reverse-sync` starts it (not started by default); a CLI-created assessment reaches its topic; `down` stops it."""
    import uuid

    from aiokafka import AIOKafkaConsumer

    from assessment_store.testing import eventually, start_group_at_end

    run = uuid.uuid4().hex[:8]
    s = stack_settings.model_copy(update={"reverse_topic": f"test.cli-reverse.{run}",
                                          "reverse_sync_group": f"cli-reverse-{run}"})
    # Start the new group at the events topic's end: the session's log is long by now.
    await start_group_at_end(s, s.reverse_sync_group, s.events_topic)
    assert "reverse-sync" not in {row["name"] for row in json.loads(_cli(s, "stack", "status", "--json").stdout)}
    up = _cli(s, "stack", "up", "reverse-sync")
    assert up.returncode == 0 and "reverse-sync: started" in up.stderr, up.stdout + up.stderr
    try:
        rows = {row["name"]: row for row in json.loads(_cli(s, "stack", "status", "--json").stdout)}
        assert rows["reverse-sync"]["running"] and s.reverse_topic in rows["reverse-sync"]["address"]
        shown = _cli(s, "flags", "show")
        assert f"reverse sync (group {s.reverse_sync_group}): running (1 member(s))" in shown.stderr, shown.stderr
        aid = json.loads(_cli(s, "create", "--request", '{"via": "cli"}', "--json").stdout)["assessmentId"]

        async def reverse_messages() -> list[dict[str, object]]:
            reader = AIOKafkaConsumer(s.reverse_topic, bootstrap_servers=s.kafka_bootstrap, group_id=None,
                                      auto_offset_reset="earliest", enable_auto_commit=False)
            await reader.start()
            try:
                got = await reader.getmany(timeout_ms=300)
                return [json.loads(r.value) for rs in got.values() for r in rs if r.value]
            finally:
                await reader.stop()

        msgs = await eventually(reverse_messages, lambda ms: any(m["data"]["assessmentId"] == aid for m in ms),
                                timeout_s=30, what="the created assessment on the reverse topic")
        [created] = [m for m in msgs if m["data"]["assessmentId"] == aid]
        assert (created["event"], created["seq"], created["data"]["request"]) == ("assessment.created", 1, {"via": "cli"})
    finally:
        down = _cli(s, "stack", "down", "reverse-sync")
        assert down.returncode == 0 and "reverse-sync: stopped" in down.stderr, down.stdout + down.stderr


def test_bridge_shadow_lists_kept_mismatches_as_json(stack_settings: Settings) -> None:
    """`bridge shadow --json` answers the kept mismatches' counts per kind and the latest rows."""
    r = _cli(stack_settings, "bridge", "shadow", "--json", "--limit", "5")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) == {"counts", "mismatches"} and len(doc["mismatches"]) <= 5
    assert all(row["kind"] in ("mismatch", "missing", "shadow-error") for row in doc["mismatches"])


async def test_demo_runs_the_store_and_the_migration_and_its_checks_hold(stack_settings: Settings) -> None:
    """`demo` prints the store's lifecycles, a dual-mode run where both sides hold every assessment and no shadow disagrees,
    then a compressed rollout 10 -> 50 -> 100 % with one gate reading per step."""
    from assessment_store.testing import start_group_at_end
    from assessment_store.migration import reverse_topic_spec
    from assessment_store.streams import ensure_topics

    s = stack_settings
    reverse_topic = s.legacy_reverse_topic
    await ensure_topics(s, [reverse_topic_spec(s)])
    # The demo's consumer groups resume where they stopped; on the session's long log they start at its end.
    await start_group_at_end(s, "assessment-store-demo-reverse", s.events_topic)
    await start_group_at_end(s, "assessment-store-demo-legacy", reverse_topic)
    r = await asyncio.to_thread(_cli, s, "demo", "--count", "2", "--migration-count", "6")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 assessments, final state read from PostgreSQL" in r.stdout
    assert "both sides hold all 6: yes" in r.stdout
    assert "0 mismatched, 0 missing" in r.stdout
    # The compressed rollout after it: one line per decision, each advance with the gate reading it was taken on.
    assert "compressed rollout 10 % -> 50 % -> 100 %" in r.stdout
    assert "ADVANCE step 1 (50 %)" in r.stdout and "ADVANCE step 2 (100 %)" in r.stdout
    assert "COMPLETE step 2 (100 %)" in r.stdout and "pass] calls" in r.stdout
    assert "rollout complete in" in r.stdout


# --- input the store cannot hold: a one-line error, never a traceback (issue 9, defects 4 and 11) -----------------


def _one_line_error(r: subprocess.CompletedProcess[str], *needles: str, code: int | None = None) -> None:
    assert r.returncode != 0 and (code is None or r.returncode == code), (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    text = r.stderr.strip()
    # One message (Rich may wrap a long one at the console width), starting with "error:".
    assert text.startswith("error:") and text.count("\n") <= 2, text
    for needle in needles:
        assert needle in text, (needle, text)


def test_cli_bad_json_files_and_deep_json_are_one_line_errors(stack_settings: Settings, tmp_path: Path) -> None:
    """--request @binary (not UTF-8), @file with 100,000 levels, NaN, and 500 levels each exit 65 (bad data) with one line."""
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"a": "\xff\xfe\x00"}')
    _one_line_error(_cli(stack_settings, "create", "--request", f"@{binary}"), "not UTF-8", code=65)
    very_deep = tmp_path / "very-deep.json"
    very_deep.write_text("[" * 100_000 + "]" * 100_000)
    _one_line_error(_cli(stack_settings, "create", "--request", f"@{very_deep}"), "nested too deeply", code=65)
    _one_line_error(_cli(stack_settings, "create", "--request", '{"x": NaN}'), "--request", code=65)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 500 + "]" * 500)
    _one_line_error(_cli(stack_settings, "create", "--request", f"@{deep}"), "deeper than 64", code=65)


def test_cli_refuses_out_of_range_numbers_unencodable_text_and_an_empty_id(stack_settings: Settings) -> None:
    """--duration-ms/--expected-version >= 2^63, a non-UTF-8 byte in --error (a lone surrogate once decoded; argv
    cannot carry NUL) and `create --id ''` exit 65 (bad data) naming the field, and change nothing."""
    aid = json.loads(_cli(stack_settings, "create", "--json").stdout)["assessmentId"]
    _one_line_error(_cli(stack_settings, "start", aid, "--expected-version", str(2**63)), "expected_version", code=65)
    assert _cli(stack_settings, "start", aid).returncode == 0
    _one_line_error(_cli(stack_settings, "complete", aid, "--duration-ms", str(2**63)), "duration_ms", code=65)
    _one_line_error(_cli(stack_settings, "fail", aid, "--error", "a\x01b\U0001f600\x7f" + "\udc80"), "error", code=65)
    _one_line_error(_cli(stack_settings, "create", "--id", ""), "assessment_id", code=65)
    got = json.loads(_cli(stack_settings, "get", aid, "--json").stdout)
    assert (got["state"], got["version"]) == ("PROCESSING", 2)


def test_cli_wait_refuses_a_negative_or_non_finite_timeout(stack_settings: Settings) -> None:
    """`wait --timeout -1`, `0`, `nan` and `inf` exit 64 (usage) with one line instead of waiting."""
    for bad in ("-1", "0", "nan", "inf"):
        _one_line_error(_cli(stack_settings, "wait", "any-id", "--timeout", bad), "--timeout", code=64)


def test_cli_import_does_not_clobber_a_rejected_file(stack_settings: Settings, tmp_path: Path) -> None:
    """`import-legacy FILE` refuses to overwrite an existing FILE.rejected.jsonl (which stays as it was) unless --overwrite."""
    from assessment_store.bridge._import import rejected_path

    path = tmp_path / "export.jsonl"
    path.write_text('{"not": "an export line"}\n')
    kept = rejected_path(path)
    kept.write_text('{"line": 7, "reason": "from an earlier import"}\n')
    r = _cli(stack_settings, "import-legacy", str(path), "--no-progress")
    _one_line_error(r, "--overwrite", code=65)
    assert kept.read_text() == '{"line": 7, "reason": "from an earlier import"}\n'
    r = _cli(stack_settings, "import-legacy", str(path), "--no-progress", "--overwrite", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rejected"] == 1 and "earlier import" not in kept.read_text()


def test_cli_prints_its_version(stack_settings: Settings) -> None:
    """--version prints the package version and exits 0."""
    from assessment_store import __version__

    r = _cli(stack_settings, "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"assessment-store {__version__}"


def test_cli_exit_codes_are_distinct() -> None:
    """Every exit code the CLI documents has one meaning: no two names share a number, and none is click's 2."""
    from assessment_store.cli import _console

    codes = {name: getattr(_console, name) for name in dir(_console) if name.startswith("EXIT_")}
    assert len(set(codes.values())) == len(codes) and 2 not in codes.values(), codes
