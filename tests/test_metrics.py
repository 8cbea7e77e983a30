"""Prometheus metrics (docs/monitoring.md, "Metrics"): the session stack's processor and projector serve
/metrics on their own ports and their counters move by what the test drove; the router's, the API's and
the client's registries; per-instance registries never collide."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from pydantic import SecretStr

from assessment_store import AssessmentStore, InvalidTransition, Settings
from assessment_store.core import Histogram, metrics_registry
from assessment_store.migration import FlagStore, MigrationRouter
from assessment_store.migration.testing import InMemoryLegacyBackend
from assessment_store.stack import Stack
from assessment_store.streams import ProcessorStats
from assessment_store.testing import eventually

from .test_http import _serve

pytestmark = pytest.mark.stack

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _scrape(url: str, **headers: str) -> Samples:
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.get(url, headers=headers)
        resp.raise_for_status()
        return _parse(resp.text)


def _registry(registry: CollectorRegistry) -> Samples:
    return _parse(generate_latest(registry).decode())


def _url(settings: Settings, service: str) -> str:
    port = settings.service_metrics_port(service)
    assert port is not None and port < 32768
    return f"http://{settings.metrics_host}:{port}/metrics"


async def test_processor_and_projector_counters_move_by_what_was_driven(
        stack_settings: Settings, store: AssessmentStore) -> None:
    """3 creates and 1 invalid transition: processor accepted +3, rejected{InvalidTransition} +1, latency count +3;
    projector events folded +3; the client's own counters agree."""
    processor, projector = _url(stack_settings, "processor"), _url(stack_settings, "projector")
    p0, j0 = await _scrape(processor), await _scrape(projector)
    c0 = _registry(store.metrics_registry())
    ids = [await store.create_assessment({"n": i}) for i in range(3)]
    with pytest.raises(InvalidTransition):
        await store.complete_assessment(ids[0], {"too": "early"})
    p1 = await _scrape(processor)
    p = "assessment_store_processor_"
    assert _value(p1, p + "commands_accepted_total") - _value(p0, p + "commands_accepted_total") == 3
    rejected = p + "commands_rejected_total"
    assert _value(p1, rejected, error_type="InvalidTransition") - _value(p0, rejected, error_type="InvalidTransition") == 1
    latency = p + "command_to_event_seconds_count"
    assert _value(p1, latency) - _value(p0, latency) == 3

    folded = "assessment_store_projector_events_folded_total"

    j1 = await eventually(lambda: _scrape(projector), lambda m: _value(m, folded) - _value(j0, folded) >= 3,
                          timeout_s=20, what="the projector's events_folded_total up by 3")
    assert _value(j1, folded) - _value(j0, folded) == 3
    assert _value(j1, "assessment_store_projector_batch_seconds_count") > _value(j0, "assessment_store_projector_batch_seconds_count")

    c1 = _registry(store.metrics_registry())
    c = "assessment_store_client_"
    assert _value(c1, c + "commands_accepted_total") - _value(c0, c + "commands_accepted_total") == 3
    assert _value(c1, c + "commands_rejected_total", error_type="InvalidTransition") - \
        _value(c0, c + "commands_rejected_total", error_type="InvalidTransition") == 1
    assert _value(c1, c + "command_outcome_seconds_count") - _value(c0, c + "command_outcome_seconds_count") == 4
    assert _value(c1, c + "command_visible_seconds_count") - _value(c0, c + "command_visible_seconds_count") == 3


async def test_projector_folds_an_assessment_it_just_committed_from_its_cache(
        stack_settings: Settings, store: AssessmentStore) -> None:
    """Commands on an assessment the projector just folded take its state from the projector's cache, not PostgreSQL."""
    projector = _url(stack_settings, "projector")
    states = "assessment_store_projector_states_total"
    j0 = await _scrape(projector)
    aid = await store.create_assessment({"cache": True})
    await store.start_assessment(aid)
    await store.update_progress(aid, 10)
    await store.update_progress(aid, 20)  # each waited for: four batches, one after the other
    j1 = await eventually(lambda: _scrape(projector),
                          lambda m: sum(_value(m, states, source=k) - _value(j0, states, source=k)
                                        for k in ("cache", "postgres")) >= 4,
                          timeout_s=20, what="the projector's states_total up by 4")
    assert _value(j1, states, source="cache") - _value(j0, states, source="cache") >= 3
    assert (await store.get_state(aid)).progress == 20


def test_stack_status_names_each_process_metrics_address(stack_settings: Settings) -> None:
    """`stack status` gives the processor and projector their /metrics URLs (and Kafka/PostgreSQL none)."""
    rows = {r.name: r for r in Stack(stack_settings).status()}
    assert rows["processor"].metrics == _url(stack_settings, "processor")
    assert rows["projector"].metrics == _url(stack_settings, "projector")
    assert rows["kafka"].metrics is None


@pytest.fixture
async def flags(stack_settings: Settings) -> AsyncIterator[FlagStore]:
    """A FlagStore on a topic of its own, with the store on (no dual mode: every call goes to the store)."""
    async with FlagStore(stack_settings, topic=f"test.metrics-flags.{uuid.uuid4().hex[:12]}") as f:
        await f.update("test", enable_assessment_store=True)
        yield f


async def test_router_metrics_by_backend_operation_outcome(flags: FlagStore, store: AssessmentStore) -> None:
    """Router calls by backend/operation/outcome, a rollback counted by router and flags, latency only while
    enableMetrics is on."""
    router = MigrationRouter(store, InMemoryLegacyBackend(), flags, sync_before_serve=False)
    registry = router.metrics_registry()
    aid = await router.create_assessment({"x": 1})
    with pytest.raises(InvalidTransition):
        await router.complete_assessment(aid, {"early": True})
    await flags.update("test", enable_assessment_store=False)  # the rollback: everything to legacy
    legacy_id = await router.create_assessment({"x": 2})
    await flags.update("test", enable_metrics=False)
    await router.get_state(legacy_id)

    m = _registry(registry)
    calls = "assessment_store_router_calls_total"
    assert _value(m, calls, backend="store", operation="create", outcome="ok") == 1
    assert _value(m, calls, backend="store", operation="complete", outcome="refused") == 1
    assert _value(m, calls, backend="legacy", operation="create", outcome="ok") == 1
    assert _value(m, calls, backend="legacy", operation="get", outcome="ok") == 1
    assert _value(m, "assessment_store_router_rollbacks_total") == 1
    assert _value(m, "assessment_store_flag_rollbacks_total") == 1
    assert _value(m, "assessment_store_flag_changes_total") == 3
    seconds = "assessment_store_router_call_seconds_count"
    assert _value(m, seconds, backend="store", operation="create") == 1
    assert _value(m, seconds, backend="legacy", operation="create") == 1
    # enableMetrics off: the call is counted, its latency not recorded.
    assert (("assessment_store_router_call_seconds_count",
             frozenset({("backend", "legacy"), ("operation", "get")})) not in m)


async def test_api_metrics_need_the_read_token_and_count_requests(stack_settings: Settings) -> None:
    """/metrics is a read: 401 without a token, 200 with the read token as bearer; requests counted by route
    template, method and status."""
    settings = stack_settings.model_copy(update={"api_token": SecretStr("w" * 40), "api_read_token": SecretStr("r" * 40)})
    async for base in _serve(settings):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            assert (await client.get("/metrics")).status_code == 401
            read = {"Authorization": "Bearer " + "r" * 40}
            for _ in range(2):
                assert (await client.get("/assessments/no-such-id", headers=read)).status_code == 404
            m = _parse((await client.get("/metrics", headers=read)).text)
    requests = "assessment_store_http_requests_total"
    assert _value(m, requests, route="/assessments/{assessment_id}", method="GET", status="404") == 2
    assert _value(m, requests, route="/metrics", method="GET", status="401") == 1
    assert _value(m, "assessment_store_http_request_seconds_count",
                  route="/assessments/{assessment_id}", method="GET") == 2


def test_instances_have_registries_of_their_own() -> None:
    """Two processors' stats in one Python process: separate registries, no collision, each its own figures."""
    a, b = ProcessorStats(), ProcessorStats()
    a.accepted, b.accepted = 5, 7
    a.command_to_event.observe(0.004)
    ra, rb = metrics_registry(a), metrics_registry(b)
    assert _value(_registry(ra), "assessment_store_processor_commands_accepted_total") == 5
    assert _value(_registry(rb), "assessment_store_processor_commands_accepted_total") == 7
    assert _value(_registry(ra), "assessment_store_processor_command_to_event_seconds_bucket", le="0.005") == 1
    assert _value(_registry(ra), "assessment_store_processor_command_to_event_seconds_bucket", le="0.0025") == 0


def test_histogram_buckets_are_less_or_equal_and_can_be_off() -> None:
    """A value equal to a bound falls in that bucket; a disabled histogram records nothing."""
    h = Histogram((1.0, 2.0))
    for v in (1.0, 1.5, 3.0):
        h.observe(v)
    assert h.cumulative() == [("1.0", 1.0), ("2.0", 2.0), ("+Inf", 3.0)]
    off = Histogram(enabled=False)
    off.observe(1.0)
    assert off.count == 0
