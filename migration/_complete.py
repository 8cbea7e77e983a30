"""``assessment-store migrate import DIR``: the whole of an export into the store, then proof that it arrived.

1. ``assessments.jsonl`` through the resumable snapshot import (``bridge.import_legacy``), 1,000 lines per
   batch: interrupted, the same command resumes from its checkpoint; run again, it finds nothing to do;
2. ``audit.jsonl`` into ``public.migration_audit`` (``import_audit``, idempotent);
3. the after-validation (``validate_after``): legacy as it is now against the store, recorded like every run.

The import is refused before it starts when the export does not match its manifest (a truncated file
would import as "lost" assessments); the before-validation (``migrate validate --before``) checks more.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from assessment_store.bridge import ImportReport, import_legacy
from assessment_store.core import Settings, ValidationError

from ._audit_import import AuditImportReport, import_audit
from ._export import ASSESSMENTS_FILE, read_manifest
from ._model import ValidationReport
from ._validate import DEFAULT_BUCKETS, DEFAULT_MAX_FINDINGS, validate_after

__all__ = ["MigrationImport", "import_export"]

BATCH_SIZE = 1000


@dataclass(frozen=True, slots=True)
class MigrationImport:
    """What ``import_export`` did, step by step."""

    export_dir: Path
    assessments: ImportReport
    audit: AuditImportReport
    validation: ValidationReport

    @property
    def ok(self) -> bool:
        return not self.validation.total_findings and self.assessments.rejected == 0 and self.audit.invalid == 0


async def import_export(
    settings: Settings, export_dir: Path, *, legacy_url: str | None = None, id_prefix: str | None = None,
    buckets: int = DEFAULT_BUCKETS, max_findings: int = DEFAULT_MAX_FINDINGS, progress: bool = True,
    overwrite: bool = False, deep: bool = False,
) -> MigrationImport:
    """Import ``export_dir`` and validate (see the module docstring). ``legacy_url`` and ``id_prefix`` default to
    the manifest's; ``overwrite`` replaces an earlier run's ``assessments.rejected.jsonl``."""
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    path = export_dir / ASSESSMENTS_FILE
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    if sha.hexdigest() != manifest.assessments.sha256:
        raise ValidationError("export", f"{path} does not match its manifest (SHA-256 {sha.hexdigest()}, the manifest "
                                        f"says {manifest.assessments.sha256}): edited or truncated; nothing imported")
    assessments = await import_legacy(settings, path, batch_size=BATCH_SIZE, progress=progress, overwrite=overwrite)
    audit = await import_audit(settings, export_dir, batch_size=BATCH_SIZE)
    validation = await validate_after(settings, legacy_url or manifest.legacy_url, buckets=buckets,
                                      max_findings=max_findings, deep=deep,
                                      id_prefix=manifest.id_prefix if id_prefix is None else id_prefix)
    return MigrationImport(export_dir, assessments, audit, validation)
