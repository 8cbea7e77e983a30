"""Consumer-group lag, Burrow-like: per partition of every group on the cluster, the committed
offset, the end offset, the lag in offsets and in seconds, a status over a sliding window, and
their Prometheus exposition; and the live dashboard over them (``Sampler``, ``dashboard_app``,
``serve_dashboard``). Definitions and rules: docs/monitoring.md."""

from ._metrics import LagCollector, lag_registry
from ._model import GroupLag, LagSnapshot, PartitionLag, Source, TopicPartitionOffsets
from ._monitor import LagMonitor, observe_once
from ._prometheus import ALERT_RULES, ALERT_RULES_TEST, ScrapeTarget, prometheus_config
from ._history import History
from ._render import dashboard_url, demo_summary, render_snapshot, run_lag_command, serve_lag_metrics
from ._sampler import Sampler, Subscription
from ._scrape import COMMAND_LATENCY, ROUTER_CALLS, ROUTER_SECONDS, PromReading, PromSource, histogram_quantile
from ._status import Observation, Status, Thresholds, Verdict, evaluate, worst
from ._web import COOKIE, STATIC_DIR, dashboard_app, serve_dashboard

__all__ = [
    "ALERT_RULES",
    "ALERT_RULES_TEST",
    "COMMAND_LATENCY",
    "COOKIE",
    "dashboard_app",
    "dashboard_url",
    "demo_summary",
    "histogram_quantile",
    "History",
    "prometheus_config",
    "PromReading",
    "PromSource",
    "ROUTER_CALLS",
    "ROUTER_SECONDS",
    "Sampler",
    "ScrapeTarget",
    "serve_dashboard",
    "STATIC_DIR",
    "Subscription",
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
