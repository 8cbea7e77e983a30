"""The Grafana dashboard for the store, built in code with the Grafana Foundation SDK and kept as JSON
beside it (``grafana-dashboards/assessment-store.json``: docker-compose provisions it into Grafana).

The JSON is generated, never edited by hand: ``python -m assessment_store.monitoring.grafana`` writes it,
and ``tests/test_grafana.py`` fails when the committed file differs from what the code builds or lacks a
panel an operator needs (lag in offsets and seconds, group status, throughput, latency, the migration).
The SDK is a build-time dependency (the ``dashboards`` extra); the store never imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

__all__ = ["DASHBOARD_JSON", "build_dashboard", "dashboard_json"]

DASHBOARD_JSON = Path(__file__).resolve().parent / "grafana-dashboards" / "assessment-store.json"
_PROMETHEUS = DataSourceRef(type_val="prometheus", uid="prometheus")
"""The data source docker-compose provisions (uid ``prometheus``)."""


def _query(expr: str, legend: str) -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).datasource(_PROMETHEUS)


def _series(title: str, unit: str, *queries: tuple[str, str], width: int = 12) -> Timeseries:
    panel = Timeseries().title(title).unit(unit).span(width).height(8).datasource(_PROMETHEUS)
    for expr, legend in queries:
        panel = panel.with_target(_query(expr, legend))
    return panel


def build_dashboard() -> Dashboard:
    quantile = "histogram_quantile({q}, sum by (le) (rate(assessment_store_client_command_visible_seconds_bucket[5m])))"
    router_p95 = ("histogram_quantile(0.95, sum by (backend, le) "
                  "(rate(assessment_store_router_call_seconds_bucket[5m])))")
    return (
        Dashboard("AssessmentStore")
        .uid("assessment-store")
        .tags(["assessment-store", "kafka", "generated"])
        .refresh("10s")
        .time("now-1h", "now")
        .with_row(Row("Consumer lag"))
        .with_panel(_series("Lag per group (records)", "short",
                            ("sum by (consumergroup) (kafka_consumergroup_lag)", "{{consumergroup}}")))
        .with_panel(_series("Lag per group (seconds)", "s",
                            ("max by (consumergroup) (assessment_store_consumergroup_lag_seconds)",
                             "{{consumergroup}}")))
        .with_panel(Stat().title("Group status (0 OK, 1 REWIND, 2 WARN, 3 ERR, 4 STALL, 5 STOP)").span(24).height(5)
                    .datasource(_PROMETHEUS)
                    .with_target(_query("assessment_store_consumergroup_status_code", "{{consumergroup}}")))
        .with_row(Row("Pipeline"))
        .with_panel(_series("Topic throughput (records/s)", "ops",
                            ("sum by (topic) (rate(kafka_topic_partition_current_offset[1m]))", "{{topic}}")))
        .with_panel(_series("Command → visible latency", "s",
                            (quantile.format(q="0.5"), "p50"), (quantile.format(q="0.95"), "p95"),
                            (quantile.format(q="0.99"), "p99")))
        .with_panel(_series("Commands (per second)", "ops",
                            ("sum(rate(assessment_store_processor_commands_accepted_total[1m]))", "accepted"),
                            ("sum by (error_type) (rate(assessment_store_processor_commands_rejected_total[1m]))",
                             "rejected {{error_type}}")))
        .with_panel(_series("Projection: events folded and anomalies", "ops",
                            ("sum(rate(assessment_store_projector_events_folded_total[1m]))", "folded"),
                            ("sum by (kind) (rate(assessment_store_projector_anomalies_total[5m]))", "{{kind}}")))
        .with_panel(_series("Bridge: translated and dead-lettered", "ops",
                            ("sum(rate(assessment_store_bridge_messages_translated_total[1m]))", "translated"),
                            ("sum by (reason) (rate(assessment_store_bridge_messages_dead_lettered_total[5m]))",
                             "dead-lettered {{reason}}")))
        .with_panel(_series("Dead letters (records in the DLQ topics)", "short",
                            ('sum by (topic) (kafka_topic_partition_current_offset{topic=~".+\\\\.dlq"})', "{{topic}}")))
        .with_row(Row("Migration"))
        .with_panel(_series("Router calls per backend (per second)", "ops",
                            ("sum by (backend, outcome) (rate(assessment_store_router_calls_total[1m]))",
                             "{{backend}} {{outcome}}")))
        .with_panel(_series("Router error rate per backend", "percentunit",
                            ('sum by (backend) (rate(assessment_store_router_calls_total{outcome="error"}[5m])) '
                             "/ sum by (backend) (rate(assessment_store_router_calls_total[5m]))", "{{backend}}")))
        .with_panel(_series("Router p95 latency per backend", "s", (router_p95, "{{backend}}")))
        .with_panel(_series("Shadow verdicts (per second)", "ops",
                            ("sum by (verdict) (rate(assessment_store_shadow_verdicts_total[5m]))", "{{verdict}}")))
        .with_panel(_series("Reverse-sync lag", "s",
                            ("max(assessment_store_reverse_sync_lag_seconds)", "lag"),
                            ('max(assessment_store_consumergroup_lag_seconds{consumergroup="assessment-store-reverse-sync"})',
                             "group lag")))
        .with_panel(_series("Flag changes and rollbacks", "short",
                            ("sum(increase(assessment_store_flag_changes_total[1h]))", "changes"),
                            ("sum(increase(assessment_store_flag_rollbacks_total[1h]))", "rollbacks")))
    )


def dashboard_json() -> str:
    """The dashboard as Grafana's JSON model (stable key order, so the committed file diffs cleanly)."""
    model = json.loads(JSONEncoder(sort_keys=True, indent=2).encode(build_dashboard().build()))
    return json.dumps(model, indent=2, sort_keys=True) + "\n"


def main() -> None:
    DASHBOARD_JSON.parent.mkdir(parents=True, exist_ok=True)
    DASHBOARD_JSON.write_text(dashboard_json())


if __name__ == "__main__":
    main()
