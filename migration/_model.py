"""What a validation finds and reports. Frozen dataclasses: built once by the validator, then only read
(rendered, recorded, serialised by pydantic at the JSON edge)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from assessment_store.core import JSON

__all__ = ["AFTER_KINDS", "BEFORE_KINDS", "Finding", "FindingKind", "ValidationReport", "ValidationRun",
           "ValidationVerdict"]


class FindingKind(str, enum.Enum):
    COUNT_MISMATCH = "count_mismatch"
    """The two sides hold a different number of assessments."""
    LOST = "lost"
    """On legacy, not in the store."""
    EXTRA = "extra"
    """In the store, not on legacy."""
    CORRUPTED = "corrupted"
    """On both sides, one compared field differs (one finding per field)."""
    DUPLICATE = "duplicate"
    """An id listed twice by legacy, or one command applied twice in a store history."""
    ILLEGAL_HISTORY = "illegal_history"
    """A store history the state machine refuses: a transition from a state that does not allow it, a version gap."""
    PROJECTION_MISMATCH = "projection_mismatch"
    """The projection's row differs from the fold of the assessment's events (one finding per field)."""
    CHECKSUM_MISMATCH = "checksum_mismatch"
    """(before) An export file differs from its manifest: SHA-256, record count, counts per status."""
    INVALID_RECORD = "invalid_record"
    """(before) A line of an export file that is not a record (not JSON, no id)."""
    ILLEGAL_AUDIT = "illegal_audit"
    """(before) An audit entry the legacy state machine refuses, or one that does not continue the previous."""
    UNKNOWN_ASSESSMENT = "unknown_assessment"
    """(before) An audit entry about an assessment the export does not hold."""


AFTER_KINDS = (FindingKind.COUNT_MISMATCH, FindingKind.LOST, FindingKind.EXTRA, FindingKind.CORRUPTED,
               FindingKind.DUPLICATE, FindingKind.ILLEGAL_HISTORY, FindingKind.PROJECTION_MISMATCH)
"""What ``validate_after`` (legacy vs the store) looks for."""
BEFORE_KINDS = (FindingKind.CHECKSUM_MISMATCH, FindingKind.COUNT_MISMATCH, FindingKind.LOST, FindingKind.EXTRA,
                FindingKind.CORRUPTED, FindingKind.DUPLICATE, FindingKind.INVALID_RECORD, FindingKind.ILLEGAL_AUDIT,
                FindingKind.UNKNOWN_ASSESSMENT)
"""What ``validate_before`` (legacy vs an export) looks for; lost, extra and corrupted read legacy vs the export."""


class ValidationVerdict(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    assessment_id: str | None
    """None for a finding about a whole side (a count mismatch)."""
    field: str | None
    values: tuple[tuple[str, JSON], ...]
    """Both values, labelled: (("legacy", ...), ("store", ...)), or (("projection", ...), ("fold", ...))."""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ValidationReport:
    kind: str
    """"after": legacy vs the store; "before": legacy vs an export file."""
    legacy_source: str
    id_prefix: str
    buckets: int
    started_at: datetime
    finished_at: datetime
    legacy_count: int
    store_count: int
    totals: dict[FindingKind, int]
    """Every finding counted, whatever the cap."""
    findings: tuple[Finding, ...]
    """At most ``max_findings`` per kind."""
    max_findings: int
    buckets_differing: int = 0
    rows_fetched: int = 0
    """Rows fetched from each side while descending into differing buckets (legacy + store)."""
    histories_checked: int = 0
    false_alarm_buckets: int = 0
    """Buckets whose checksums differ but whose rows compare equal field by field (2.0 against 2, say)."""
    seconds: dict[str, float] = field(default_factory=dict)
    run_id: int | None = None
    """Its row in public.migration_validations, once recorded."""
    export_dir: str | None = None
    """(before) The export directory checked against legacy; ``store_count`` is then the export's count and
    ``histories_checked`` the audit entries checked."""

    @property
    def verdict(self) -> ValidationVerdict:
        return ValidationVerdict.FAIL if any(self.totals.values()) else ValidationVerdict.PASS

    @property
    def total_findings(self) -> int:
        return sum(self.totals.values())


@dataclass(frozen=True, slots=True)
class ValidationRun:
    """One row of public.migration_validations: what ``latest_validation`` answers."""

    run_id: int
    kind: str
    verdict: ValidationVerdict
    started_at: datetime
    finished_at: datetime
    legacy_source: str
    id_prefix: str
    buckets: int
    legacy_count: int
    store_count: int
    totals: dict[str, int]
