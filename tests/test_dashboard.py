"""The dashboard: its bounded history, quantiles from histogram buckets, the Prometheus source
(present and absent), token rules, SSE clients that go away, and the page in a real headless
Chromium showing a group's lag change while records flow (screenshot in .data/artifacts/)."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.structs import OffsetAndMetadata
from pydantic import SecretStr
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from starlette.testclient import TestClient

from assessment_store import Settings
from assessment_store.monitoring import (
    COOKIE, History, PromSource, Sampler, dashboard_app, histogram_quantile,
)
from assessment_store.streams import admin_client, kafka_client_options
from assessment_store.testing import eventually

ROOT = Path(__file__).resolve().parent.parent
PORT_BASE = int(os.environ.get("ASSESSMENT_STORE_TEST_PORT_BASE", "29092"))
ARTIFACTS = ROOT / ".data" / "artifacts"
TOKEN = "dashboard-test-token-" + uuid.uuid4().hex


# -- pure parts ------------------------------------------------------------------------------------

def test_history_is_a_bounded_ring() -> None:
    """The history keeps the last `capacity` points, drops series that left the ring, and caps the series count."""
    h = History(5, max_series=3)
    for i in range(12):
        h.append(float(i), {"a": float(i), "old": 1.0 if i < 2 else None, f"x{i}": 1.0})
    out = h.export()
    assert out["t"] == [7.0, 8.0, 9.0, 10.0, 11.0]
    series: Any = out["series"]
    assert series["a"] == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert "old" not in h.series_names  # no value left in the ring
    assert len(h.series_names) <= 3 and h.dropped_series > 0
    assert h.export(since=10.0)["t"] == [10.0, 11.0]


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    """Quantiles interpolate linearly inside the bucket, and fall back to the highest finite bound in +Inf."""
    buckets = {0.1: 50.0, 0.2: 90.0, 0.4: 100.0, math.inf: 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.3)
    assert histogram_quantile(0.99, {0.1: 1.0, math.inf: 10.0}) == pytest.approx(0.1)
    assert histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None


async def test_prometheus_source_reads_histograms_and_counters_and_says_no_data_when_absent() -> None:
    """Latency quantiles and router rates come from the increase between two scrapes; an absent target is 'no data'."""
    registry = CollectorRegistry()
    latency = Histogram("assessment_store_client_command_visible_seconds", "t", buckets=(0.01, 0.05, 0.1, 1.0),
                        registry=registry)
    calls = Counter("assessment_store_router_calls", "t", ["backend", "outcome"], registry=registry)
    router = Histogram("assessment_store_router_call_seconds", "t", ["backend"], buckets=(0.01, 0.1), registry=registry)
    port = PORT_BASE + 61
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        absent = f"http://127.0.0.1:{PORT_BASE + 62}/metrics"
        source = PromSource([f"http://127.0.0.1:{port}/metrics", absent], timeout_s=1.0)
        first = await source.read(100.0)
        assert first.command_p50 is None and first.targets[absent].startswith("unreachable")
        for _ in range(90):
            latency.observe(0.02)
        for _ in range(10):
            latency.observe(0.5)
        calls.labels("store", "ok").inc(8)
        calls.labels("store", "error").inc(2)
        calls.labels("legacy", "ok").inc(5)
        router.labels("store").observe(0.05)
        second = await source.read(110.0)
        assert second.command_p50 is not None and 0.01 < second.command_p50 <= 0.05
        assert second.command_p99 is not None and 0.1 < second.command_p99 <= 1.0
        assert second.router["store"]["rate"] == pytest.approx(1.0)
        assert second.router["store"]["errorRate"] == pytest.approx(0.2)
        assert second.router["legacy"]["errorRate"] == 0.0
        third = await source.read(120.0)  # nothing observed since: no quantile, not zero
        assert third.command_p95 is None
        empty = await PromSource([]).read(1.0)
        assert empty.command_p50 is None and empty.targets == {}
    finally:
        server.shutdown()
        thread.join(timeout=5)


# -- token rules -----------------------------------------------------------------------------------

def _settings(**tokens: Any) -> Settings:
    return Settings(api_read_token=tokens.get("read"), api_token=tokens.get("write"))


def test_dashboard_refuses_without_a_token_and_lets_a_cookie_in() -> None:
    """No token: 401; a wrong one: 403; none configured: 403; ?token= sets an HttpOnly cookie that then opens every route."""
    settings = _settings(read=TOKEN)
    sampler = Sampler(settings, scrape_urls=())  # never started: the routes read what it holds
    with TestClient(dashboard_app(settings, sampler)) as client:
        assert client.get("/healthz").status_code == 200
        for path in ("/", "/api/history", "/api/stream", "/static/dashboard.js"):
            assert client.get(path).status_code == 401, path
        assert client.get("/api/history", headers={"Authorization": "Bearer nope"}).status_code == 403
        assert client.get("/?token=nope", follow_redirects=False).status_code == 403
        resp = client.get(f"/?token={TOKEN}", follow_redirects=False)
        assert resp.status_code == 303 and resp.headers["location"] == "/"
        cookie = resp.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and TOKEN not in cookie
        page = client.get("/")
        assert page.status_code == 200 and "uPlot" in page.text
        assert client.get("/api/history").json()["capacity"] == sampler.history.capacity
        assert "default-src 'self'" in page.headers["content-security-policy"]
        client.cookies.clear()
        ok = client.get("/api/history", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        client.cookies.set(COOKIE, "forged")
        assert client.get("/api/history").status_code == 403
    closed = _settings()
    with TestClient(dashboard_app(closed, Sampler(closed, scrape_urls=()))) as client:
        assert client.get("/api/history", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 403
        assert client.get(f"/?token={TOKEN}", follow_redirects=False).status_code == 403


# -- against the real stack ------------------------------------------------------------------------

class _Served:
    """The dashboard (sampler + uvicorn) in a thread of its own, with its own event loop, so a
    blocking browser driver in the test does not stall it."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.sampler: Sampler | None = None
        self._server: uvicorn.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="dashboard", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # surfaced by start()/stop()
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        async with Sampler(self.settings, scrape_urls=()) as sampler:
            self.sampler = sampler
            config = uvicorn.Config(dashboard_app(self.settings, sampler), host="127.0.0.1", port=self.port,
                                    log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
            self._server = uvicorn.Server(config)
            task = asyncio.create_task(self._server.serve())
            while not self._server.started and not task.done():
                await asyncio.sleep(0.02)
            self._ready.set()
            await task

    def start(self) -> _Served:
        self._thread.start()
        assert self._ready.wait(30), "dashboard did not start"
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(timeout=20)
        assert not self._thread.is_alive(), "dashboard did not stop"


@pytest.fixture(scope="module")
def served(stack_settings: Settings) -> Iterator[_Served]:
    """A dashboard over the session's stack, sampling twice a second."""
    settings = stack_settings.model_copy(update={
        "api_read_token": SecretStr(TOKEN), "dashboard_resolution_s": 0.5, "lag_poll_interval_s": 0.5,
        "dashboard_max_clients": 4})
    s = _Served(settings, PORT_BASE + 60).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.stack
async def test_sse_clients_that_disconnect_leave_the_server_healthy(served: _Served) -> None:
    """Clients that read one event and vanish are unsubscribed; the server keeps answering and sampling."""
    assert served.sampler is not None
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=served.url, headers=headers, timeout=10) as client:
        for _ in range(3):  # more rounds than one: a leak would add up
            streams = []
            for _ in range(4):
                cm = client.stream("GET", "/api/stream")
                resp = await cm.__aenter__()
                assert resp.status_code == 200
                streams.append((cm, resp))
            over = await client.get("/api/stream")
            assert over.status_code == 503  # the cap holds while four are live
            for cm, resp in streams:
                async for line in resp.aiter_lines():
                    if line.startswith("event: sample"):
                        break
                await cm.__aexit__(None, None, None)  # the client goes away mid-stream
            await eventually(lambda: _subscribers(served), lambda n: n == 0, timeout_s=10, what="unsubscribed")
        ticks = served.sampler.ticks
        health = (await client.get("/healthz")).json()
        assert health["ok"] and health["liveClients"] == 0
        await eventually(lambda: _ticks(served), lambda t: t > ticks + 2, timeout_s=10, what="still sampling")
        assert (await client.get("/api/history")).status_code == 200


async def _subscribers(served: _Served) -> int:
    assert served.sampler is not None
    return served.sampler.subscribers


async def _ticks(served: _Served) -> int:
    assert served.sampler is not None
    return served.sampler.ticks


async def _produce(settings: Settings, topic: str, n: int) -> None:
    producer = AIOKafkaProducer(**kafka_client_options(settings, "admin"), acks="all")
    await producer.start()
    try:
        for i in range(n):
            await producer.send_and_wait(topic, f"r{i}".encode(), partition=0)
    finally:
        await producer.stop()


async def _commit(settings: Settings, group: str, tp: TopicPartition, offset: int) -> None:
    consumer = AIOKafkaConsumer(**kafka_client_options(settings, "admin"), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: OffsetAndMetadata(offset, "")})
    finally:
        await consumer.stop()


def chromium_driver() -> Any:
    """A headless Chromium through the system chromedriver (scripts/bootstrap.sh installs both)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.fail("chromium and chromedriver are needed (bash scripts/bootstrap.sh installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=opts)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = chromium_driver()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.stack
async def test_page_in_chromium_shows_a_groups_lag_change_while_records_flow(
        served: _Served, stack_settings: Settings, browser: Any) -> None:
    """The page, loaded with ?token= in headless Chromium, shows a lagging group's lag grow live, without reload."""
    from selenium.webdriver.common.by import By

    topic, group = f"dash-{uuid.uuid4().hex[:8]}", f"dash-group-{uuid.uuid4().hex[:8]}"
    async with admin_client(stack_settings) as admin:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    tp = TopicPartition(topic, 0)
    await _produce(stack_settings, topic, 5)
    await _commit(stack_settings, group, tp, 0)

    def cell(cls: str) -> str | None:
        # Read in one script: the table is re-rendered every tick, so a held element goes stale.
        text: str | None = browser.execute_script(
            "const td = document.querySelector(arguments[0]); return td ? td.textContent : null;",
            f'#groups tr[data-group="{group}"] td.{cls}')
        return text

    def lag_text() -> str | None:
        return cell("lag")

    async def shown() -> str | None:
        return await asyncio.to_thread(lag_text)

    await asyncio.to_thread(browser.get, f"{served.url}/?token={TOKEN}")
    assert "token" not in browser.current_url  # the redirect took it out of the address bar
    await eventually(shown, lambda t: t == "5", timeout_s=20, what="lag 5 on the page")
    loads = browser.execute_script("return performance.getEntriesByType('navigation').length")
    await _produce(stack_settings, topic, 7)
    await eventually(shown, lambda t: t == "12", timeout_s=20, what="lag 12 on the page")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"  # taken while the group lags (CI keeps .data)
    await asyncio.to_thread(browser.save_screenshot, str(shot))
    assert shot.stat().st_size > 10_000
    await _commit(stack_settings, group, tp, 12)
    await eventually(shown, lambda t: t == "0", timeout_s=20, what="lag 0 on the page")
    # Live, not reloaded: the same navigation, and samples arrived through the stream.
    assert browser.execute_script("return performance.getEntriesByType('navigation').length") == loads
    assert int(browser.execute_script("return document.body.dataset.samples || '0'")) > 0
    status = cell("status")
    assert status in {"OK", "WARN"}
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-lag canvas"), "the lag chart was not drawn"
    assert "no data" in browser.find_element(By.ID, "cmd-now").text  # no scrape target configured


@pytest.mark.stack
async def test_page_without_a_token_is_refused_in_chromium(served: _Served, browser: Any) -> None:
    """A browser without the cookie gets the 401 problem document, not the page."""
    browser.delete_all_cookies()
    await asyncio.to_thread(browser.get, f"{served.url}/")
    assert "Unauthorized" in browser.page_source and "uPlot" not in browser.page_source


@pytest.mark.stack
async def test_stack_runs_the_dashboard_as_a_service(stack_settings: Settings) -> None:
    """`stack up dashboard` serves the page with the stack's read token, a second `up` is a no-op, `down` stops it."""
    from assessment_store.stack import Stack

    settings = stack_settings.model_copy(update={"api_read_token": SecretStr(TOKEN)})
    stack = Stack(settings)
    base = f"http://127.0.0.1:{settings.dashboard_port}"
    try:
        assert await asyncio.to_thread(stack.up, ["dashboard"], lambda _m: None) == {"dashboard": True}
        assert await asyncio.to_thread(stack.up, ["dashboard"], lambda _m: None) == {"dashboard": False}
        row = next(s for s in stack.status() if s.name == "dashboard")
        assert row.running and row.address == f"{base}/"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            assert (await client.get("/api/history")).status_code == 401
            history = await client.get("/api/history", headers={"Authorization": f"Bearer {TOKEN}"})
            assert history.status_code == 200 and history.json()["capacity"] > 0
    finally:
        stopped = await asyncio.to_thread(stack.down, ["dashboard"], lambda _m: None)
    assert stopped == {"dashboard": True}
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            await client.get("/healthz")
