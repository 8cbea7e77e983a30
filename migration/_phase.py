"""Where the migration is, for ``migrate status``: one phase derived from what the store already
records (docs/migration.md, "Phase").

* **done**: a ``migration_cleanup`` row in ``public.migration_audit`` (the cleanup's last step);
* **cleanup**: every call goes to the store (``enableAssessmentStore``, ``migrationPercentage`` 100), no
  rollout is still running, and the latest after-validation passed: what ``migrate cleanup`` requires
  (besides its hold time);
* **full migration**: every call goes to the store, but a rollout is still soaking its last step or
  the latest validation did not pass (or never ran);
* **dual mode**: the store takes part (``enableAssessmentStore`` with a percentage below 100, or dual
  mode on);
* **preparation**: everything on legacy (nothing started yet, or rolled back).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from assessment_store.core import JSON, Settings
from assessment_store.projections import connection, migrate, translate_db_errors

from ._flags import FLAGS_TOPIC, FlagStore, MigrationFlags
from ._model import ValidationRun, ValidationVerdict
from ._reverse import ReverseSyncStatus, reverse_sync_status
from ._rollout import RolloutState
from ._runs import latest_validation

__all__ = ["PHASES", "MigrationPhase", "derive_phase", "read_phase"]

PHASES = ("preparation", "dual mode", "full migration", "cleanup", "done")


@dataclass(frozen=True, slots=True)
class MigrationPhase:
    phase: str
    reason: str
    flags: MigrationFlags
    validation: ValidationRun | None
    cleanup_at: datetime | None
    reverse_sync: ReverseSyncStatus | None
    reverse_sync_error: str | None = None

    def to_json(self) -> dict[str, JSON]:
        v = self.validation
        return {
            "phase": self.phase, "reason": self.reason,
            "flags": self.flags.to_json(),
            "validation": None if v is None else {
                "runId": v.run_id, "verdict": v.verdict.value, "finishedAt": v.finished_at.isoformat(),
                "legacyCount": v.legacy_count, "storeCount": v.store_count, "idPrefix": v.id_prefix,
                "totals": {k: n for k, n in v.totals.items() if n}},
            "cleanupAt": None if self.cleanup_at is None else self.cleanup_at.isoformat(),
            "reverseSync": None if self.reverse_sync is None else self.reverse_sync.to_json(),
            "reverseSyncError": self.reverse_sync_error,
        }


def derive_phase(flags: MigrationFlags, rollout: RolloutState, validation: ValidationRun | None,
                 cleanup_at: datetime | None) -> tuple[str, str]:
    """(phase, why) from the flags, the rollout's fold, the latest after-validation and the cleanup row."""
    if cleanup_at is not None:
        return "done", f"legacy cleaned up at {cleanup_at.isoformat(timespec='seconds')}"
    if flags.enable_assessment_store and flags.migration_percentage >= 100:
        if rollout.status in ("running", "held", "paused"):
            return "full migration", f"every call on the store; the rollout is {rollout.status} at its last step"
        if validation is None:
            return "full migration", "every call on the store; no validation has run (`migrate validate`)"
        if validation.verdict is not ValidationVerdict.PASS:
            return "full migration", f"every call on the store; the latest validation (run {validation.run_id}) failed"
        return "cleanup", (f"every call on the store and the latest validation (run {validation.run_id}) passed: "
                           "`migrate cleanup` may run once the flags held")
    if flags.enable_assessment_store or flags.enable_dual_mode:
        return "dual mode", (f"{flags.migration_percentage:g} % of calls on the store"
                             + (f"; rollout {rollout.status} at step {rollout.step + 1}" if rollout.status else ""))
    if rollout.status == "rolled_back":
        return "preparation", "every call on legacy: the last rollout was rolled back"
    return "preparation", "every call on legacy"


async def _cleanup_at(settings: Settings, flags_topic: str) -> datetime | None:
    """When the migration steered by ``flags_topic`` was cleaned up whole: a staged cleanup (an id prefix) or
    one of another migration (other flags) does not end this one."""
    async with connection(settings) as conn:
        with translate_db_errors("reading the cleanup's audit row"):
            await migrate(conn)
            at = await conn.fetchval(
                "SELECT max(occurred_at) FROM public.migration_audit WHERE operation = $1"
                " AND coalesce(details->>'idPrefix', '') = '' AND coalesce(details->>'flagsTopic', $2) = $2",
                "migration_cleanup", flags_topic)
    return at if isinstance(at, datetime) else None


async def read_phase(settings: Settings, rollout: RolloutState, *, flags_topic: str = FLAGS_TOPIC) -> MigrationPhase:
    """The flags (folded from their topic), the latest after-validation, the cleanup row and the reverse sync."""
    async with FlagStore(settings, topic=flags_topic) as store:
        flags = store.current()
    validation = await latest_validation(settings)
    cleanup_at = await _cleanup_at(settings, flags_topic)
    sync: ReverseSyncStatus | None = None
    sync_error: str | None = None
    try:
        sync = await reverse_sync_status(settings)
    except Exception as e:  # the lag is context here: its absence must not hide the phase
        sync_error = str(e)
    phase, reason = derive_phase(flags, rollout, validation, cleanup_at)
    return MigrationPhase(phase, reason, flags, validation, cleanup_at, sync, sync_error)
