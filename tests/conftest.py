"""Session fixtures: one real stack (Kafka, PostgreSQL, projector) for the whole run.

The stack gets its own data directory and ports, so a developer's running stack is untouched.
``ASSESSMENT_STORE_TEST_PORT_BASE`` moves the ports; ``ASSESSMENT_STORE_TEST_BACKEND=testcontainers``
uses Docker containers instead of the local stack.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from assessment_store import AssessmentStore, Settings
from assessment_store.testing import isolated_settings, running_stack

ROOT = Path(__file__).resolve().parent.parent
PORT_BASE = int(os.environ.get("ASSESSMENT_STORE_TEST_PORT_BASE", "29092"))


@pytest.fixture(scope="session")
def stack_settings() -> Iterator[Settings]:
    """Settings of a freshly purged stack that runs for the whole session."""
    from assessment_store.stack import Stack

    settings = isolated_settings(
        ROOT / ".data" / f"test-session-{PORT_BASE}",
        port_base=PORT_BASE,
        test_backend=os.environ.get("ASSESSMENT_STORE_TEST_BACKEND", "local"),
        visibility_timeout_s=20.0,
        # The broker's minimum: a process killed by a test holds its partitions this long.
        consumer_session_timeout_ms=6000,
    )
    if settings.test_backend == "local":
        Stack(settings).purge(log=lambda _m: None)
    with running_stack(settings) as effective:
        yield effective


@pytest.fixture(scope="session")
async def store(stack_settings: Settings) -> AsyncIterator[AssessmentStore]:
    """One started client shared by the session's tests."""
    async with AssessmentStore(stack_settings) as s:
        yield s
