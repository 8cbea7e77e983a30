"""What the stack's Prometheus is told: its configuration (scrape targets, rule files, Alertmanager),
and where the shipped alert rules live.

Prometheus reads YAML, and JSON is YAML: the configuration is written with ``json.dumps``, so no YAML
library is needed to produce it. The rules (``prometheus/alerts.yml``) are a file of their own, loaded
by Prometheus and unit-tested with ``promtool test rules prometheus/alerts_test.yml``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ALERT_RULES", "ALERT_RULES_TEST", "ScrapeTarget", "prometheus_config"]

ALERT_RULES = Path(__file__).resolve().parent / "prometheus" / "alerts.yml"
ALERT_RULES_TEST = Path(__file__).resolve().parent / "prometheus" / "alerts_test.yml"


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """One process serving ``/metrics``: ``job`` names it in every series Prometheus keeps of it."""

    job: str
    address: str
    """``host:port``."""
    metrics_path: str = "/metrics"
    bearer_token_file: Path | None = None
    """A file holding the bearer token the target requires (the HTTP API's read token)."""


def prometheus_config(targets: list[ScrapeTarget], *, scrape_interval_s: float, rule_files: list[Path],
                      alertmanager: str | None = None) -> str:
    """The text of ``prometheus.yml``: one job per target, every rule file, Alertmanager if given."""
    jobs: list[dict[str, object]] = []
    for t in targets:
        job: dict[str, object] = {
            "job_name": t.job, "metrics_path": t.metrics_path, "static_configs": [{"targets": [t.address]}],
        }
        if t.bearer_token_file is not None:
            job["authorization"] = {"type": "Bearer", "credentials_file": str(t.bearer_token_file)}
        jobs.append(job)
    interval = f"{scrape_interval_s:g}s"
    config: dict[str, object] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "external_labels": {"service": "assessment-store"}},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": jobs,
    }
    if alertmanager is not None:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return json.dumps(config, indent=2) + "\n"
