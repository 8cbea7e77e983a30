"""The client a service embeds: ``AssessmentStore`` sends commands to the command topic and reads its
own writes from the PostgreSQL projection; ``SyncAssessmentStore`` is its blocking twin.

It stands on ``streams`` (the command sender) and ``projections`` (the queries), and is what the HTTP
API, the migration router and the CLI build on; ``assessment_store`` re-exports both names.

Metrics of an embedding process: ``store.stats`` counts, ``store.metrics_registry()`` is a Prometheus
registry of its own, ``start_metrics_server(registry, port)`` serves it (docs/monitoring.md, "Metrics").
"""

from assessment_store.core import metrics_registry, start_metrics_server

from ._store import AssessmentStore, ClientStats
from ._sync import SyncAssessmentStore

__all__ = ["AssessmentStore", "ClientStats", "SyncAssessmentStore", "metrics_registry", "start_metrics_server"]
