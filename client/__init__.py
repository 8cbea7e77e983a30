"""The client a service embeds: ``AssessmentStore`` sends commands to the command topic and reads its
own writes from the PostgreSQL projection; ``SyncAssessmentStore`` is its blocking twin.

It stands on ``streams`` (the command sender) and ``projections`` (the queries), and is what the HTTP
API, the migration router and the CLI build on; ``assessment_store`` re-exports both names.
"""

from ._store import AssessmentStore
from ._sync import SyncAssessmentStore

__all__ = ["AssessmentStore", "SyncAssessmentStore"]
