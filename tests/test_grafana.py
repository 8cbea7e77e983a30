"""The Grafana dashboard: the committed JSON is what the code builds, and it holds the panels and
queries an operator of a migration needs. No services: the JSON is checked as data."""

from __future__ import annotations

import json
from typing import Any

from assessment_store.monitoring._grafana import DASHBOARD_JSON, dashboard_json


def _panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD_JSON.read_text())["panels"] if p["type"] != "row"]


def test_the_committed_dashboard_is_what_the_code_builds() -> None:
    """Regenerating gives the committed file byte for byte (`python -m assessment_store.monitoring.grafana`)."""
    assert DASHBOARD_JSON.read_text() == dashboard_json()


def test_the_dashboard_has_the_panels_a_migration_needs() -> None:
    """Lag in records and seconds, status, throughput, latency quantiles, router errors and latency, shadows
    and reverse-sync lag each have a panel querying the metric that carries them, from the Prometheus source."""
    queries = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in _panels()}
    wanted = {
        "Lag per group (records)": "kafka_consumergroup_lag",
        "Lag per group (seconds)": "assessment_store_consumergroup_lag_seconds",
        "Topic throughput (records/s)": "rate(kafka_topic_partition_current_offset",
        "Command → visible latency": "histogram_quantile(0.99",
        "Router error rate per backend": 'assessment_store_router_calls_total{outcome="error"}',
        "Router p95 latency per backend": "assessment_store_router_call_seconds_bucket",
        "Shadow verdicts (per second)": "assessment_store_shadow_verdicts_total",
        "Reverse-sync lag": "assessment_store_reverse_sync_lag_seconds",
    }
    for title, metric in wanted.items():
        assert metric in queries.get(title, ""), (title, queries.get(title))
    assert any(t.startswith("Group status") for t in queries)
    assert all(p["datasource"]["uid"] == "prometheus" for p in _panels())
    assert json.loads(DASHBOARD_JSON.read_text())["uid"] == "assessment-store"
