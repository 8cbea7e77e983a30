"""Prometheus as the stack runs it: the shipped alert rules pass promtool's own unit tests, and
`stack up lag-monitor alertmanager prometheus` scrapes every running target (`up == 1`) with the rules
loaded and Alertmanager attached. Real binaries from Debian's packages (`make test` installs them)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from assessment_store import Settings
from assessment_store.monitoring import ALERT_RULES, ALERT_RULES_TEST
from assessment_store.stack import Stack
from assessment_store.testing import eventually

PROMETHEUS_SERVICES = ["lag-monitor", "alertmanager", "prometheus"]


def _promtool() -> str:
    exe = shutil.which("promtool")
    assert exe is not None, "promtool is missing: `bash scripts/bootstrap.sh --for-tests` installs it"
    return exe


def test_alert_rules_are_valid() -> None:
    """`promtool check rules` accepts the shipped rules file."""
    r = subprocess.run([_promtool(), "check", "rules", str(ALERT_RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_alert_rules_fire_on_the_series_they_are_written_for() -> None:
    """`promtool test rules`: each alert fires on series past its threshold, and not on series short of it."""
    r = subprocess.run([_promtool(), "test", "rules", str(ALERT_RULES_TEST)], capture_output=True, text=True,
                       timeout=120, cwd=ALERT_RULES_TEST.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (loopback)
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def prometheus(stack_settings: Settings) -> Iterator[Stack]:
    """The session stack with its lag monitor, Alertmanager and Prometheus started, and stopped afterwards."""
    stack = Stack(stack_settings)
    try:
        stack.up(PROMETHEUS_SERVICES, log=lambda _m: None)
        yield stack
    finally:
        stack.down(PROMETHEUS_SERVICES, log=lambda _m: None)


@pytest.mark.stack
async def test_prometheus_scrapes_every_running_target(prometheus: Stack, stack_settings: Settings) -> None:
    """Every target whose service runs is `up == 1`, and the lag monitor's series reach Prometheus."""
    base = f"http://127.0.0.1:{stack_settings.prometheus_port}"
    running = {s.name for s in prometheus.status() if s.running}

    def targets() -> dict[str, str]:
        doc = _get(f"{base}/api/v1/targets")
        return {t["labels"]["job"]: t["health"] for t in doc["data"]["activeTargets"]}

    # Service discovery runs once Prometheus is ready, so the first answers may list no target yet.
    discovered = await eventually(lambda: _async(targets), lambda t: "lag-monitor" in t, timeout_s=30,
                                  what="the lag monitor among Prometheus's targets")
    wanted = {job for job in discovered if job in running}
    await eventually(lambda: _async(targets), lambda t: all(t.get(j) == "up" for j in wanted), timeout_s=60,
                     what=f"Prometheus scraping {sorted(wanted)}")
    query = urllib.parse.quote("max(kafka_consumergroup_lag)")

    def lag_series() -> int:
        return len(_get(f"{base}/api/v1/query?query={query}")["data"]["result"])

    await eventually(lambda: _async(lag_series), lambda n: n > 0, timeout_s=60,
                     what="the lag monitor's series in Prometheus")


@pytest.mark.stack
async def test_prometheus_loads_the_rules_and_reaches_alertmanager(prometheus: Stack,
                                                                   stack_settings: Settings) -> None:
    """The shipped rule groups are loaded (not failing to evaluate), and Alertmanager is an active receiver."""
    base = f"http://127.0.0.1:{stack_settings.prometheus_port}"
    groups = _get(f"{base}/api/v1/rules")["data"]["groups"]
    assert {"assessment-store-lag", "assessment-store-targets"} <= {g["name"] for g in groups}
    assert all(rule["health"] != "err" for g in groups for rule in g["rules"]), groups

    def alertmanagers() -> list[str]:
        return [a["url"] for a in _get(f"{base}/api/v1/alertmanagers")["data"]["activeAlertmanagers"]]

    await eventually(lambda: _async(alertmanagers), lambda urls: any(str(stack_settings.alertmanager_port) in u
                                                                     for u in urls),
                     timeout_s=30, what="Alertmanager among Prometheus's active alertmanagers")


async def _async(fn: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(fn)
