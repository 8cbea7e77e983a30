"""``assessment-store migrate export``: the legacy service's data, over HTTP, into a directory.

    manifest = await export_legacy(settings, "http://127.0.0.1:PORT", Path("export-2024-05-01"))

writes three files (docs/migration.md, "Exporting"):

* ``assessments.jsonl``: ``GET /export``, one legacy record per line (docs/legacy-format.md);
* ``audit.jsonl``: ``GET /export/audit``, the legacy service's audit log, oldest first;
* ``manifest.json``: counts (per status too), the SHA-256 and size of each file, the time range of the
  records, the legacy URL and when the export was made. Written last: a directory without it is an
  interrupted export.

Both streams are written line by line as they arrive, each file hashed as it is written: memory stays
bounded whatever the size. Each file is written beside its final name and renamed into place, so a
reader never sees half a file under the final name. The two requests are not one snapshot: changes
made between them are in the audit log and not in the records (the before-validation reports them).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from assessment_store.core import JSON, Settings, ValidationError

from ._canonical import epoch_ms
from ._legacy_http import LegacyUnavailable

__all__ = [
    "ASSESSMENTS_FILE", "AUDIT_FILE", "MANIFEST_FILE", "ExportManifest", "ExportedFile", "export_legacy", "read_manifest",
]

ASSESSMENTS_FILE = "assessments.jsonl"
AUDIT_FILE = "audit.jsonl"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
_REJECTED_FILE = "assessments.rejected.jsonl"
"""What an import of the export leaves beside it (bridge.rejected_path): replaced with the export."""


@dataclass(frozen=True, slots=True)
class ExportedFile:
    name: str
    records: int
    bytes: int
    sha256: str
    first_at: str | None = None
    """The earliest time among its records (``timestamp`` of assessments, ``at`` of audit entries)."""
    last_at: str | None = None
    """The latest (``updatedAt`` of assessments, ``at`` of audit entries)."""


@dataclass(frozen=True, slots=True)
class ExportManifest:
    legacy_url: str
    exported_at: datetime
    id_prefix: str
    assessments: ExportedFile
    audit: ExportedFile
    by_status: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, JSON]:
        def one(f: ExportedFile) -> dict[str, JSON]:
            return {"records": f.records, "bytes": f.bytes, "sha256": f.sha256,
                    "time_range": {"from": f.first_at, "to": f.last_at}}
        return {
            "format": MANIFEST_FORMAT,
            "legacy_url": self.legacy_url,
            "exported_at": self.exported_at.isoformat(),
            "id_prefix": self.id_prefix,
            "counts": {"assessments": self.assessments.records, "audit": self.audit.records,
                       "by_status": dict(sorted(self.by_status.items()))},
            "time_range": {"from": _earliest(self.assessments.first_at, self.audit.first_at),
                           "to": _latest(self.assessments.last_at, self.audit.last_at)},
            "files": {self.assessments.name: one(self.assessments), self.audit.name: one(self.audit)},
        }


def read_manifest(export_dir: Path) -> ExportManifest:
    """The manifest of an export directory; ``ValidationError`` when missing or unreadable."""
    path = Path(export_dir) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]

        def one(name: str) -> ExportedFile:
            f = files[name]
            tr = f.get("time_range") or {}
            return ExportedFile(name, int(f["records"]), int(f["bytes"]), str(f["sha256"]), tr.get("from"), tr.get("to"))

        return ExportManifest(
            legacy_url=str(data["legacy_url"]), exported_at=datetime.fromisoformat(data["exported_at"]),
            id_prefix=str(data.get("id_prefix", "")), assessments=one(ASSESSMENTS_FILE), audit=one(AUDIT_FILE),
            by_status={str(k): int(v) for k, v in data["counts"]["by_status"].items()},
        )
    except FileNotFoundError as e:
        raise ValidationError("export", f"{path} does not exist: not an export directory, or an interrupted "
                                        "export (`assessment-store migrate export` writes it last)") from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValidationError("export", f"{path} is not a readable export manifest: {e!r}") from e


async def export_legacy(
    settings: Settings, legacy_url: str, out_dir: Path, *, overwrite: bool = False, id_prefix: str = "",
    progress: bool = True, timeout_s: float = 300.0,
) -> ExportManifest:
    """Export the legacy service at ``legacy_url`` into ``out_dir`` (see the module docstring).

    A directory that exists and holds anything is refused (``ValidationError``) unless ``overwrite``: it may
    be an earlier export someone still needs. ``id_prefix`` limits the export to the ids starting with it.
    Lines longer than twice ``settings.max_request_bytes`` (plus room for the other fields) are refused
    rather than held: no legacy record the store could take is that large."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValidationError("out", f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValidationError("out", f"{out} is not empty (an earlier export?); pass --overwrite (overwrite=True) "
                                     "to replace it, or choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for name in (MANIFEST_FILE, _REJECTED_FILE):
            (out / name).unlink(missing_ok=True)
    started = time.perf_counter()
    exported_at = datetime.now(UTC)
    max_line = 2 * settings.max_request_bytes + 64 * 1024
    base = legacy_url.rstrip("/")
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(timeout_s, connect=10.0)) as client:
        counts = await _get_json(client, base, "/export/counts", {"idPrefix": id_prefix})
        total = counts.get("total") if isinstance(counts.get("total"), int) else None
        by_status: dict[str, int] = {}
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=Console(stderr=True), disable=not progress) as bar:
            task = bar.add_task("exporting assessments", total=total)

            def on_record(record: dict[str, Any]) -> tuple[object, object]:
                status = record.get("status")
                by_status[str(status)] = by_status.get(str(status), 0) + 1
                bar.advance(task)
                return record.get("timestamp"), record.get("updatedAt")

            assessments = await _stream_to_file(client, base, "/export", {"idPrefix": id_prefix},
                                                out / ASSESSMENTS_FILE, "assessmentId", on_record, max_line)
            task = bar.add_task("exporting the audit log", total=None)

            def on_entry(entry: dict[str, Any]) -> tuple[object, object]:
                bar.advance(task)
                return entry.get("at"), entry.get("at")

            audit = await _stream_to_file(client, base, "/export/audit", {"idPrefix": id_prefix}, out / AUDIT_FILE,
                                          "auditId", on_entry, max_line)
    manifest = ExportManifest(legacy_url=base, exported_at=exported_at, id_prefix=id_prefix, assessments=assessments,
                              audit=audit, by_status=by_status, seconds=time.perf_counter() - started)
    _write_atomically(out / MANIFEST_FILE, (json.dumps(manifest.to_json(), indent=2) + "\n").encode())
    return manifest


async def _get_json(client: httpx.AsyncClient, base: str, path: str, params: dict[str, str]) -> dict[str, Any]:
    url = base + path
    try:
        response = await client.get(path, params=params)
    except httpx.HTTPError as e:
        raise LegacyUnavailable(f"legacy GET {url} failed: {type(e).__name__}: {e}", url=url) from e
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict):
        raise LegacyUnavailable(f"legacy GET {url} answered {response.status_code}: {response.text[:500]}",
                                url=url, status=response.status_code)
    return body


async def _lines(client: httpx.AsyncClient, base: str, path: str, params: dict[str, str]) -> AsyncIterator[str]:
    url = base + path
    try:
        async with client.stream("GET", path, params=params) as response:
            if response.status_code != 200:
                await response.aread()
                raise LegacyUnavailable(f"legacy GET {url} answered {response.status_code}: {response.text[:500]}",
                                        url=url, status=response.status_code)
            async for line in response.aiter_lines():
                yield line
    except httpx.HTTPError as e:
        raise LegacyUnavailable(f"legacy GET {url} failed: {type(e).__name__}: {e}", url=url) from e


async def _stream_to_file(
    client: httpx.AsyncClient, base: str, path: str, params: dict[str, str], target: Path, id_field: str,
    on_item: Callable[[dict[str, Any]], tuple[object, object]], max_line: int,
) -> ExportedFile:
    """Copy a JSON Lines stream into ``target`` line by line, checking each line and hashing what is written."""
    part = target.with_name(target.name + ".part")
    h = hashlib.sha256()
    records = size = 0
    first: tuple[int, str] | None = None
    last: tuple[int, str] | None = None
    with part.open("wb") as f:
        os.fchmod(f.fileno(), 0o600)  # it holds request and result documents
        async for line in _lines(client, base, path, params):
            if not line.strip():
                continue
            raw = line.encode("utf-8")
            if len(raw) > max_line:
                raise LegacyUnavailable(f"legacy GET {base + path} streamed a line of {len(raw)} bytes, above the "
                                        f"limit of {max_line}", url=base + path)
            try:
                item = json.loads(line)
            except ValueError as e:
                raise LegacyUnavailable(f"legacy GET {base + path} streamed a line that is not JSON: {line[:200]!r}",
                                        url=base + path) from e
            if not isinstance(item, dict) or not isinstance(item.get(id_field), str):
                raise LegacyUnavailable(f"legacy GET {base + path} streamed a line without {id_field}: {line[:200]!r}",
                                        url=base + path)
            raw += b"\n"
            f.write(raw)
            h.update(raw)
            records += 1
            size += len(raw)
            start, end = on_item(item)
            for value, is_first in ((start, True), (end, False)):
                ms = epoch_ms(value)
                if ms is None or not isinstance(value, str):
                    continue
                if is_first and (first is None or ms < first[0]):
                    first = (ms, value)
                if not is_first and (last is None or ms > last[0]):
                    last = (ms, value)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, target)
    return ExportedFile(target.name, records, size, h.hexdigest(), first[1] if first else None,
                        last[1] if last else None)


def _write_atomically(target: Path, data: bytes) -> None:
    part = target.with_name(target.name + ".part")
    with part.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, target)


def _earliest(a: str | None, b: str | None) -> str | None:
    both = [x for x in (a, b) if x is not None and epoch_ms(x) is not None]
    return min(both, key=lambda x: epoch_ms(x) or 0) if both else None


def _latest(a: str | None, b: str | None) -> str | None:
    both = [x for x in (a, b) if x is not None and epoch_ms(x) is not None]
    return max(both, key=lambda x: epoch_ms(x) or 0) if both else None
