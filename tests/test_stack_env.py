"""Services elsewhere on the machine reach the local stack: a per-user data directory, `stack env`,
and a stack whose data directory the cluster's account cannot enter."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from assessment_store import AssessmentStore, ServiceFailed, Settings
from assessment_store.testing import isolated_settings
from assessment_store.stack import Stack, settings_env

from .conftest import PORT_BASE


def test_default_data_dir_is_per_user_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ASSESSMENT_STORE_DATA_DIR the data dir is $XDG_DATA_HOME/assessment-store, else ~/.local/share/...."""
    monkeypatch.delenv("ASSESSMENT_STORE_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Settings().data_dir == tmp_path / "xdg" / "assessment-store"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")  # the XDG rules: only an absolute path counts
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings().data_dir == tmp_path / "home" / ".local" / "share" / "assessment-store"


def _exports(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        found[name] = shlex.split(value)[0]
    return found


@pytest.mark.stack
async def test_stack_env_lets_the_cli_and_the_client_reach_the_stack_from_another_directory(
    store: AssessmentStore, stack_settings: Settings, tmp_path: Path
) -> None:
    """`stack env` exports (and nothing else of the environment) let the CLI and a Python service in another cwd read and write."""
    aid = await store.create_assessment({"from": "elsewhere"})
    env_cmd = subprocess.run([sys.executable, "-m", "assessment_store.cli", "stack", "env"], capture_output=True, text=True,
                             env={**os.environ, **settings_env(stack_settings)}, timeout=60, check=True)
    exports = _exports(env_cmd.stdout)
    assert exports["ASSESSMENT_STORE_DATA_DIR"] == str(stack_settings.data_dir.resolve())
    assert not any("TOKEN" in k or "PASSWORD" in k for k in exports), "stack env must not print secrets"

    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "COLUMNS": "200", **exports}
    got = subprocess.run([sys.executable, "-m", "assessment_store.cli", "get", aid, "--json"], capture_output=True,
                         text=True, env=clean, cwd=tmp_path, timeout=120)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["assessmentId"] == aid

    service = (
        "from assessment_store import SyncAssessmentStore\n"
        "with SyncAssessmentStore() as s:\n"
        f"    s.start_assessment({aid!r})\n"
        f"    print(s.get_state({aid!r}).state.value)\n"
    )
    ran = subprocess.run([sys.executable, "-c", service], capture_output=True, text=True, env=clean, cwd=tmp_path,
                         timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "PROCESSING"


@pytest.mark.stack
@pytest.mark.skipif(os.geteuid() != 0, reason="the cluster runs as another account only when started by root")
def test_stack_up_with_a_data_dir_the_cluster_account_cannot_enter(tmp_path: Path) -> None:
    """A 0700 data dir made by root: PostgreSQL starts beside it, logs beside the cluster, `stack logs` finds the log;
    deleted by hand, the orphaned cluster is reported with how to remove it."""
    data_dir = Path(tempfile.mkdtemp(prefix="assessment-store-0700-"))  # mode 0700, like mktemp -d
    settings = isolated_settings(data_dir, port_base=PORT_BASE + 700)
    stack = Stack(settings)
    try:
        assert stack.up(["postgres"], log=lambda _m: None) == {"postgres": True}
        log = Path(stack.log_path("postgres"))
        assert log.exists() and log.stat().st_size > 0
        assert not log.is_relative_to(data_dir)  # the postgres account could not have written it there
        env = {**os.environ, **settings_env(settings), "COLUMNS": "200"}
        shown = subprocess.run([sys.executable, "-m", "assessment_store.cli", "stack", "logs", "postgres"],
                               capture_output=True, text=True, env=env, timeout=60)
        assert shown.returncode == 0 and shown.stdout.strip(), shown.stderr

        async def count() -> int:
            async with AssessmentStore(settings) as client:
                return await client.get_assessment_count()

        assert asyncio.run(count()) == 0

        # The data directory deleted by hand: the relocated cluster stays, its passwords do not.
        stack.down(["postgres"], log=lambda _m: None)
        shutil.rmtree(data_dir)
        data_dir.mkdir(mode=0o700)
        with pytest.raises(ServiceFailed, match="rm -rf"):
            Stack(settings).up(["postgres"], log=lambda _m: None)
    finally:
        Stack(settings).purge(log=lambda _m: None)
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)
