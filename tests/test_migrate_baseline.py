"""``migrate baseline`` on the real stack: the projection's statistics, VACUUM, a baseline measured from known
router traffic (observations published by an ``ObservationPublisher``), and ``--compare`` against planted
stored baselines."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from assessment_store import AssessmentStore, DatabaseUnavailable, Settings
from assessment_store.migration import FlagStore, MigrationRouter, ObservationPublisher
from assessment_store.migration.testing import InMemoryLegacyBackend
from assessment_store.projections import connection, migrate, record_baseline
from assessment_store.stack import settings_env
from assessment_store.testing import eventually

pytestmark = pytest.mark.stack


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "assessment_store.cli", "migrate", "baseline", *args],
                          capture_output=True, text=True, env=env, timeout=120)


class EveryNthFails:
    """The real store, but every ``n``-th call raises the store's own ``DatabaseUnavailable``."""

    def __init__(self, store: AssessmentStore, n: int) -> None:
        self.store = store
        self.n = n
        self._calls = itertools.count(1)

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if next(self._calls) % self.n == 0:
                raise DatabaseUnavailable("injected store failure")
            return await target(*args, **kwargs)

        return call


async def _plant(settings: Settings, **figures: Any) -> int:
    now = datetime.now(UTC)
    async with connection(settings) as conn:
        await migrate(conn)
        stored = await record_baseline(conn, window_start=now - timedelta(minutes=15), window_end=now,
                                       source="observations", throughput_per_s=figures["throughputPerS"],
                                       error_rate=figures["errorRate"], avg_ms=None, p95_ms=figures["p95Ms"],
                                       p99_ms=None, figures=figures)
    return stored.id


def test_report_lists_the_projection_tables_and_indexes(stack_settings: Settings) -> None:
    """The report ANALYZEs and lists the projection's tables and indexes (the primary keys marked unique), and
    records a baseline."""
    r = _cli(stack_settings, "--json", "--window", "1m", "--observations-topic", f"test.baseline-obs.{uuid.uuid4().hex}")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    tables = {t["table"] for t in doc["tables"]}
    assert {"assessments", "assessment_events", "command_outcomes", "projector_offsets"} <= tables
    assert "projection.assessments" in doc["analyzed"] and doc["vacuumed"] == []
    indexes = {i["index"]: i for i in doc["indexes"]}
    assert indexes["assessments_state_idx"]["table"] == "assessments"
    assert indexes["assessments_pkey"]["unique"] is True
    assert all(s["kind"] != "unused_index" or not indexes[s["detail"].split(":")[0]]["unique"]
               for s in doc["suggestions"])
    assert doc["baseline"]["id"] > 0 and doc["baseline"]["source"] in ("observations", "projection")
    assert doc["regressions"] == [] and doc["comparedWith"] is None


def test_vacuum_runs_and_the_rich_report_names_tables_and_the_baseline(stack_settings: Settings) -> None:
    """--vacuum runs VACUUM (ANALYZE) over every projection table; the Rich output shows both tables and the baseline line."""
    r = _cli(stack_settings, "--vacuum", "--window", "30s", "--observations-topic",
             f"test.baseline-obs.{uuid.uuid4().hex}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "VACUUM (ANALYZE):" in r.stdout and "tables (projection)" in r.stdout and "indexes (projection)" in r.stdout
    assert "assessment_events" in r.stdout and "baseline " in r.stdout and "error rate" in r.stdout


async def test_baseline_from_known_router_traffic_has_its_throughput_and_error_rate(
        stack_settings: Settings, store: AssessmentStore) -> None:
    """40 creates through a MigrationRouter at 100 % with every 4th store call failing: the baseline folds the published
    windows to 40 calls, 10 errors (25 %), 40/900 per second over 15 min, and a p95 from the histogram."""
    tag = uuid.uuid4().hex[:10]
    obs_topic = f"test.baseline-obs.{tag}"
    async with FlagStore(stack_settings, topic=f"test.baseline-flags.{tag}") as flags:
        await flags.update("test", enable_assessment_store=True, migration_percentage=100)
        pub = ObservationPublisher(stack_settings, window_s=1.0, topic=obs_topic, instance_id="baseline-router")
        await pub.start()
        try:
            router = MigrationRouter(EveryNthFails(store, 4), InMemoryLegacyBackend(), flags, sync_before_serve=False,
                                     observer=pub)
            for i in range(40):
                await router.create_assessment({"subject": f"baseline-{i}"}, assessment_id=f"baseline-{tag}-{i}")
        finally:
            await pub.stop()  # flushes the partial window
    assert pub.publish_failures == 0
    r = await eventually(lambda: asyncio.to_thread(_cli, stack_settings, "--json", "--window", "15m",
                                                   "--observations-topic", obs_topic),
                         lambda r: r.returncode == 0 and json.loads(r.stdout)["baseline"]["calls"] == 40,
                         timeout_s=30, what="the published windows in the baseline")
    b = json.loads(r.stdout)["baseline"]
    assert (b["source"], b["calls"], b["errors"], b["instances"]) == ("observations", 40, 10, 1)
    assert b["errorRate"] == pytest.approx(0.25)
    assert b["throughputPerS"] == pytest.approx(40 / 900, rel=1e-3)
    assert b["throughputPerMin"] == pytest.approx(40 / 15, rel=1e-3)
    assert b["p95Ms"] is not None and b["p99Ms"] >= b["p95Ms"] > 0 and b["avgMs"] > 0
    assert b["outcomesAccepted"] >= 30  # the 30 creates that reached the store, plus the session's other traffic


async def test_compare_against_a_better_stored_baseline_reports_the_regression_and_exits_1(
        stack_settings: Settings) -> None:
    """--compare against a planted baseline with far more throughput and no errors flags the throughput drop and
    exits 1; against a planted lenient one it reports no regression and exits 0."""
    obs_topic = f"test.baseline-obs.{uuid.uuid4().hex}"
    planted = await _plant(stack_settings, throughputPerS=1000.0, errorRate=0.0, p95Ms=1.0)
    r = await asyncio.to_thread(_cli, stack_settings, "--compare", "--json", "--observations-topic", obs_topic)
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["comparedWith"]["id"] == planted
    assert [g["metric"] for g in doc["regressions"]][:1] == ["throughputPerS"]
    assert doc["regressions"][0]["before"] == 1000.0 and doc["regressions"][0]["limit"] == pytest.approx(800.0)
    # The run above stored its own baseline, the latest now: plant a better one again for the Rich output.
    await _plant(stack_settings, throughputPerS=1000.0, errorRate=0.0, p95Ms=1.0)
    text = await asyncio.to_thread(_cli, stack_settings, "--compare", "--observations-topic", obs_topic)
    assert text.returncode == 1 and "REGRESSION" in text.stdout and "throughput" in text.stdout, text.stdout
    lenient = await _plant(stack_settings, throughputPerS=1e-9, errorRate=1.0, p95Ms=1e9)
    ok = await asyncio.to_thread(_cli, stack_settings, "--compare", "--json", "--observations-topic", obs_topic)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["comparedWith"]["id"] == lenient and json.loads(ok.stdout)["regressions"] == []
