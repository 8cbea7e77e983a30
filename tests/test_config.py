"""Settings come from one class with one environment prefix."""

import pytest
from pydantic import ValidationError

from assessment_store import Settings


def test_environment_overrides_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """ASSESSMENT_STORE_* variables override defaults."""
    monkeypatch.setenv("ASSESSMENT_STORE_KAFKA_PORT", "39999")
    monkeypatch.setenv("ASSESSMENT_STORE_EVENTS_TOPIC", "x.events")
    s = Settings()
    assert (s.kafka_port, s.events_topic, s.kafka_bootstrap) == (39999, "x.events", "127.0.0.1:39999")


def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """An out-of-range port is refused with the setting's name in the message."""
    monkeypatch.setenv("ASSESSMENT_STORE_POSTGRES_PORT", "70000")
    with pytest.raises(ValidationError, match="postgres_port"):
        Settings()


def test_default_ports_are_below_the_ephemeral_range() -> None:
    """Every default listening port lies below 32768, where Linux never hands out client ports."""
    s = Settings()
    ports = {name: getattr(s, name) for name in ("kafka_port", "kafka_controller_port", "postgres_port", "api_port")}
    assert all(p < 32768 for p in ports.values()), ports
