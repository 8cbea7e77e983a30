"""The Node legacy tap's own test suite (`npm test` in bridge/node), run against the session's broker."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from assessment_store import Settings

pytestmark = pytest.mark.stack

NODE_DIR = Path(__file__).resolve().parent.parent / "bridge" / "node"


def test_node_tap_suite_passes_against_the_real_broker(stack_settings: Settings) -> None:
    """`npm test` (node --test: routing vectors, tap delivery, overflow, sample legacy service) exits 0."""
    npm = shutil.which("npm")
    assert npm is not None, "npm is required (scripts/bootstrap.sh installs the Node dependencies)"
    assert (NODE_DIR / "node_modules").is_dir(), "run `npm ci` in bridge/node (scripts/bootstrap.sh does)"
    r = subprocess.run(
        [npm, "test", "--silent"], cwd=NODE_DIR, capture_output=True, text=True, timeout=300,
        env={**os.environ, "KAFKA_BOOTSTRAP": stack_settings.kafka_bootstrap},
    )
    assert r.returncode == 0, f"npm test failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert "# fail 0" in r.stdout, r.stdout[-2000:]
