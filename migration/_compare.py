"""Legacy records against store assessments, field by field, in the legacy representation (the
representation of the canonical form, migration/_canonical.py). Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC
from typing import Any

from assessment_store.core import JSON, Assessment

from ._canonical import epoch_ms
from ._model import Finding, FindingKind

__all__ = ["VALIDATED_FIELDS", "TIME_RESOLUTION_MS", "compare_rows", "same_json", "store_view"]

VALIDATED_FIELDS = ("status", "progress", "message", "request", "result", "error", "timestamp", "updatedAt",
                   "duration")
TIME_RESOLUTION_MS = 1000
"""Times closer than this are the same time (see migration/_canonical.py)."""
_TIMES = frozenset({"timestamp", "updatedAt"})
_WITH_DURATION = frozenset({"completed", "failed"})


def same_json(a: JSON, b: JSON) -> bool:
    """JSON equality: 2 and 2.0 are the same number (JavaScript has one number type), true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def store_view(a: Assessment) -> dict[str, JSON]:
    """The store's assessment as a legacy record (the export fields)."""
    status = a.state.value.lower()
    return {
        "assessmentId": a.assessment_id, "status": status, "progress": a.progress, "message": a.message,
        "request": a.request_data, "result": a.result_data, "error": a.error_message,
        "timestamp": a.created_at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "updatedAt": a.updated_at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "duration": a.duration,
    }


def _masked(view: Mapping[str, JSON], name: str) -> JSON:
    status = view.get("status")
    if name == "status":
        return status.lower() if isinstance(status, str) else status
    if name == "duration" and not (isinstance(status, str) and status.lower() in _WITH_DURATION):
        return None  # the canonical form's rule: the store keeps no duration but for these two
    return view.get(name)


def _same_field(name: str, legacy: Mapping[str, JSON], store: Mapping[str, JSON]) -> bool:
    if name in _TIMES:
        # To the second, as the canonical form: the bridge's events carry the tap's emission time.
        a, b = epoch_ms(legacy.get(name)), epoch_ms(store.get(name))
        return a == b if a is None or b is None else abs(a - b) < TIME_RESOLUTION_MS
    return same_json(_masked(legacy, name), _masked(store, name))


def _brief(view: Mapping[str, JSON]) -> dict[str, JSON]:
    return {k: view.get(k) for k in ("status", "progress", "timestamp", "updatedAt")}


def compare_rows(legacy: Iterable[dict[str, Any]], store: Iterable[Assessment]) -> Iterator[Finding]:
    """Lost, extra, corrupted (one finding per differing field) and legacy duplicates among the given rows,
    which must be the same buckets of both sides."""
    by_id: dict[str, dict[str, Any]] = {}
    repeats: dict[str, int] = {}
    for record in legacy:
        aid = record.get("assessmentId")
        if not isinstance(aid, str):
            continue
        if aid in by_id:
            repeats[aid] = repeats.get(aid, 1) + 1
            if not same_json(by_id[aid], record):
                by_id[aid] = record  # the later one, as an import of the export would leave it
        else:
            by_id[aid] = record
    for aid, n in sorted(repeats.items()):
        yield Finding(FindingKind.DUPLICATE, aid, "assessmentId", (("legacy_records", n), ("store_rows", None)),
                      f"legacy lists {aid!r} {n} times")
    store_ids: set[str] = set()
    for a in store:
        store_ids.add(a.assessment_id)
        theirs = by_id.get(a.assessment_id)
        mine = store_view(a)
        if theirs is None:
            yield Finding(FindingKind.EXTRA, a.assessment_id, None, (("legacy", None), ("store", _brief(mine))))
            continue
        for name in VALIDATED_FIELDS:
            if not _same_field(name, theirs, mine):
                yield Finding(FindingKind.CORRUPTED, a.assessment_id, name,
                              (("legacy", theirs.get(name)), ("store", mine.get(name))))
    for aid in sorted(by_id.keys() - store_ids):
        yield Finding(FindingKind.LOST, aid, None, (("legacy", _brief(by_id[aid])), ("store", None)))
