"""The client a service embeds: ``AssessmentStore`` sends commands to the command topic and reads its
own writes from the PostgreSQL projection; ``SyncAssessmentStore`` is its blocking twin.

``AssessmentStore.subscribe`` (``Subscription``) reads the events topic itself, decoded, with
positions a service stores beside its own state (``Position``, ``PositionTable``): for services that
rebuild their state from the log (docs/subscriptions.md). ``TopicReader`` is the reader under it and
under ``assessment-store events``.

It stands on ``streams`` (the command sender) and ``projections`` (the queries), and is what the HTTP
API, the migration router and the CLI build on; ``assessment_store`` re-exports both names.

Metrics of an embedding process: ``store.stats`` counts, ``store.metrics_registry()`` is a Prometheus
registry of its own, ``start_metrics_server(registry, port)`` serves it (docs/monitoring.md, "Metrics").
"""

from assessment_store.core import metrics_registry, start_metrics_server

from ._checkpoint import PositionTable
from ._position import Position
from ._reader import Record, StartAt, TopicReader
from ._store import AssessmentStore, ClientStats
from ._subscription import EventRecord, Subscription, SubscriptionStats, resolve_start
from ._sync import SyncAssessmentStore, SyncSubscription

__all__ = [
    "AssessmentStore", "ClientStats", "EventRecord", "Position", "PositionTable", "Record", "StartAt",
    "Subscription", "SubscriptionStats", "SyncAssessmentStore", "SyncSubscription", "TopicReader",
    "metrics_registry", "start_metrics_server", "resolve_start",
]
