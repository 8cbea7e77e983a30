"""Consumer-group lag, Burrow-like: per partition of every group on the cluster, the committed
offset, the end offset, the lag in offsets and in seconds, a status over a sliding window, and
their Prometheus exposition. Definitions and rules: docs/monitoring.md."""

from ._metrics import LagCollector, lag_registry
from ._model import GroupLag, LagSnapshot, PartitionLag, Source, TopicPartitionOffsets
from ._monitor import LagMonitor, observe_once
from ._prometheus import ALERT_RULES, ALERT_RULES_TEST, ScrapeTarget, prometheus_config
from ._render import render_snapshot, run_lag_command, serve_lag_metrics
from ._status import Observation, Status, Thresholds, Verdict, evaluate, worst

__all__ = [
    "ALERT_RULES",
    "ALERT_RULES_TEST",
    "ScrapeTarget",
    "prometheus_config",
    "GroupLag",
    "LagCollector",
    "LagMonitor",
    "LagSnapshot",
    "Observation",
    "PartitionLag",
    "Source",
    "Status",
    "Thresholds",
    "TopicPartitionOffsets",
    "Verdict",
    "evaluate",
    "lag_registry",
    "observe_once",
    "render_snapshot",
    "run_lag_command",
    "serve_lag_metrics",
    "worst",
]
