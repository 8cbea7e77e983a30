"""docker-compose.yml and the testcontainers backend, checked without a Docker engine (none runs here):
what the files promise, read from the files themselves."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from assessment_store import Settings
from assessment_store.testing import isolated_settings, kafka_container_spec

from .conftest import ROOT


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml, parsed."""
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_runs_the_broker_version_of_the_local_stack(compose: dict[str, Any]) -> None:
    """The compose broker image is the Kafka version the local stack downloads."""
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{Settings().kafka_version}"


def test_compose_persists_kafka_where_the_broker_writes(compose: dict[str, Any]) -> None:
    """KAFKA_LOG_DIRS is the mount point of a named volume (the image's default log dir is /tmp)."""
    kafka = compose["services"]["kafka"]
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in kafka["volumes"]}
    assert log_dirs in mounts and mounts[log_dirs] in compose["volumes"]


def test_compose_app_role_is_not_the_superuser(compose: dict[str, Any]) -> None:
    """The store's role is created by the init script without superuser rights; POSTGRES_USER is another role."""
    pg = compose["services"]["postgres"]
    env = pg["environment"]
    assert env["POSTGRES_USER"] != Settings().postgres_user == env["APP_USER"]
    init = [v for v in pg["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert len(init) == 1
    script = ROOT / init[0].split(":")[0]
    assert "NOSUPERUSER" in script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    dsn = compose["services"]["projector"]["environment"]["ASSESSMENT_STORE_POSTGRES_DSN"]
    assert dsn.startswith(f"postgresql://{env['APP_USER']}:")


def test_compose_has_health_checks_and_the_store_services(compose: dict[str, Any]) -> None:
    """Kafka and PostgreSQL have health checks; the processor and projector wait for them to be healthy."""
    services = compose["services"]
    assert all("healthcheck" in services[name] for name in ("kafka", "postgres"))
    for name in ("processor", "projector"):
        assert services[name]["command"][-1] == name
        assert {dep: c["condition"] for dep, c in services[name]["depends_on"].items()} == {
            "kafka": "service_healthy", "postgres": "service_healthy"}
    assert services["processor"]["environment"]["ASSESSMENT_STORE_BOOTSTRAP_SERVERS"] == "kafka:29092"
    assert "DOCKER://kafka:29092" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]


def test_testcontainers_kafka_uses_the_apache_image_in_kraft_mode(tmp_path: Path) -> None:
    """The container backend builds a generic apache/kafka container advertising the host port it binds."""
    settings = isolated_settings(tmp_path, port_base=20000)
    image, env, ports = kafka_container_spec(settings)
    assert image == f"apache/kafka:{settings.kafka_version}"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://127.0.0.1:{settings.kafka_port}"
    assert ports == {9092: settings.kafka_port}


def test_compose_scrapes_the_store_and_loads_the_shipped_rules(compose: dict[str, Any]) -> None:
    """Prometheus mounts the rules file the promtool tests check and scrapes the processor, projector and lag
    monitor on the ports their settings give; both monitoring UIs are published on loopback only."""
    prometheus = compose["services"]["prometheus"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in prometheus["volumes"]}
    assert mounts["./monitoring/prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    config = yaml.safe_load((ROOT / "stack/compose/prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in config["scrape_configs"]}
    s = Settings()
    assert targets == {"processor": f"processor:{s.service_metrics_port('processor')}",
                       "projector": f"projector:{s.service_metrics_port('projector')}",
                       "lag-monitor": f"lag-monitor:{s.lag_monitor_port}"}
    for name in ("prometheus", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in compose["services"][name]["ports"]), name


def test_compose_grafana_provisions_the_generated_dashboard(compose: dict[str, Any]) -> None:
    """Grafana gets the Prometheus data source under the uid the dashboard's panels use, and the folder holding
    the generated dashboard JSON; its admin password comes from the environment, never the file."""
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    datasources = yaml.safe_load((ROOT / "stack/compose/grafana/datasources.yml").read_text())["datasources"]
    assert [d["uid"] for d in datasources] == ["prometheus"]
    provider = yaml.safe_load((ROOT / "stack/compose/grafana/dashboards.yml").read_text())["providers"][0]
    assert mounts["./monitoring/grafana-dashboards"] == provider["options"]["path"]
    assert (ROOT / "monitoring/grafana-dashboards/assessment-store.json").exists()
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${ASSESSMENT_STORE_GRAFANA_PASSWORD:?")


def test_the_image_installs_what_its_commands_need(compose: dict[str, Any]) -> None:
    """The compose services run `assessment-store ...` from the image: it installs the server and CLI extras, not the
    bare client (whose script would only say which extra is missing)."""
    assert all(svc["command"][0] == "assessment-store" for name, svc in compose["services"].items() if "build" in svc)
    assert 'pip install --no-cache-dir "/app[server,cli]"' in (ROOT / "Dockerfile").read_text()
