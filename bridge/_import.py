"""Snapshot import: a JSON Lines legacy export -> the commands that bring each assessment to its
exported state (``_snapshot.plan_import``), in batches.

    report = await import_legacy(settings, Path("export.jsonl"))

Per batch of ``batch_size`` lines (1,000 by default):

1. each line is checked (bad ones are kept with their line number and reason);
2. the batch's assessments are read from the projection, in one query, and each good line is
   planned against its assessment's current state (only missing steps; nothing when up to date);
3. the commands are sent to the commands topic (source ``migration``), all acks awaited;
4. their outcomes are awaited in ``projection.command_outcomes`` (so the counts of accepted and
   refused commands are exact, and the next batch's plans see this batch's states);
5. the batch's bad lines are appended to ``<file>.rejected.jsonl`` (fsync), then the checkpoint
   (next line, its byte offset, the rejected file's size, cumulative counts) is written to
   ``public.legacy_import_checkpoints`` under the file's SHA-256.

Resuming after an interruption anywhere in 1-5 restarts at the checkpointed line: the rejected
file is cut back to the checkpointed size (no line is reported twice), and the batch is planned
and sent again - with the same command ids (they depend on the line's content, not on the
store's state), which the processor answers with their first outcome and no new event. A
finished file is not imported again unless ``restart=True``; a restarted import of a file already
imported finds every assessment up to date and sends nothing.
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import hashlib
import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import asyncpg
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from assessment_store.core import Settings
from assessment_store.core import CommandTimeout, ValidationError
from assessment_store.core import Command, CommandEnvelope, EventSource
from assessment_store.projections import create_pool, record_audit, translate_db_errors
from assessment_store.projections import fetch_assessments

from ._legacy import RejectKind, Rejection
from ._producer import Appender
from ._snapshot import ExportRecord, ImportPlan, parse_export_line, plan_import

__all__ = ["BadLine", "ImportReport", "import_legacy", "rejected_path"]

log = logging.getLogger("assessment_store.bridge.import")

MAX_BAD_LINES_IN_REPORT = 1000
_REJECTED_RAW_CAP = 64 * 1024


def rejected_path(path: Path) -> Path:
    """``export.jsonl`` -> ``export.rejected.jsonl``, next to the input."""
    return path.with_name(f"{path.stem if path.suffix else path.name}.rejected.jsonl")


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class ImportReport:
    """Counts for the whole file (across resumed runs); ``lines_this_run`` is this run's share."""

    path: Path
    sha256: str
    total_lines: int
    first_line: int
    """Where this run started (1, or the checkpoint it resumed from)."""
    lines_done: int
    lines_this_run: int
    already_done: bool
    imported: int
    """Lines whose assessment needed commands."""
    up_to_date: int
    """Lines whose assessment already had the exported state."""
    store_ahead: int
    """Lines whose assessment is further along in the store (e.g. the live bridge moved it on)."""
    blank: int
    rejected: int
    """Bad lines and conflicts, all in ``rejected_file``."""
    rejected_by_kind: dict[str, int]
    bad_lines: tuple[BadLine, ...]
    """This run's first ``MAX_BAD_LINES_IN_REPORT`` bad lines (all of them are in ``rejected_file``)."""
    rejected_file: Path
    commands_sent: int
    accepted: int
    refused: int
    """Commands the processor refused (listed by ``bridge_rejections``)."""
    batches: int
    elapsed_s: float

    @property
    def finished(self) -> bool:
        return self.lines_done >= self.total_lines

    @property
    def lines_per_s(self) -> float:
        return self.lines_this_run / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class _Counts:
    imported: int = 0
    up_to_date: int = 0
    store_ahead: int = 0
    blank: int = 0
    rejected: int = 0
    commands_sent: int = 0
    accepted: int = 0
    refused: int = 0
    batches: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {"imported": self.imported, "up_to_date": self.up_to_date, "store_ahead": self.store_ahead,
                "blank": self.blank, "rejected": self.rejected, "commands_sent": self.commands_sent,
                "accepted": self.accepted, "refused": self.refused, "batches": self.batches,
                "by_kind": dict(self.by_kind)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _Counts:
        return cls(**{k: int(v) for k, v in d.items() if k != "by_kind"}, by_kind=Counter(d.get("by_kind", {})))


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    next_line: int
    next_offset: int
    rejected_bytes: int
    counts: dict[str, Any]
    finished: bool


@dataclass(frozen=True, slots=True)
class _Line:
    number: int
    raw: bytes
    too_long: int | None = None
    """The line's full length when it exceeded the limit (``raw`` is then its prefix)."""


# --- file access ----------------------------------------------------------------------------------

def _scan(path: Path) -> tuple[str, int]:
    """SHA-256 and line count in one pass (a last line without a newline counts)."""
    h = hashlib.sha256()
    lines = 0
    last = b"\n"
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return h.hexdigest(), lines + (0 if last == b"\n" else 1)


def _read_lines(f: IO[bytes], first: int, count: int, max_bytes: int) -> tuple[list[_Line], int]:
    """Up to ``count`` lines numbered from ``first``; returns them and the offset after them.
    A line longer than ``max_bytes`` is returned as a prefix with its length, never held whole."""
    out: list[_Line] = []
    while len(out) < count:
        raw = f.readline(max_bytes + 1)
        if not raw:
            break
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            size = len(raw)
            while True:
                rest = f.readline(1 << 20)
                size += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            out.append(_Line(first + len(out), raw[:_REJECTED_RAW_CAP], too_long=size))
        else:
            out.append(_Line(first + len(out), raw))
    return out, f.tell()


def _rejected_entry(line: _Line, r: Rejection) -> bytes:
    entry: dict[str, Any] = {"line": line.number, "kind": r.kind.value, "field": r.field, "reason": r.reason}
    body = line.raw.rstrip(b"\r\n")[:_REJECTED_RAW_CAP]
    entry["truncated"] = line.too_long is not None or len(line.raw.rstrip(b"\r\n")) > _REJECTED_RAW_CAP
    try:
        entry["raw"] = body.decode("utf-8")
    except UnicodeDecodeError:
        entry["rawBase64"] = base64.b64encode(body).decode("ascii")
    return json.dumps(entry, ensure_ascii=True).encode("ascii") + b"\n"


# --- checkpoints ------------------------------------------------------------------------------------

async def _load_checkpoint(pool: asyncpg.Pool, sha: str) -> _Checkpoint | None:
    with translate_db_errors("reading the import checkpoint"):
        r = await pool.fetchrow(
            "SELECT next_line, next_offset, rejected_bytes, counters, finished_at"
            " FROM public.legacy_import_checkpoints WHERE file_sha256 = $1", sha,
        )
    if r is None:
        return None
    return _Checkpoint(r["next_line"], r["next_offset"], r["rejected_bytes"], r["counters"], r["finished_at"] is not None)


async def _save_checkpoint(
    pool: asyncpg.Pool, sha: str, path: Path, total: int, next_line: int, next_offset: int, rejected_bytes: int,
    counts: _Counts, *, fresh: bool = False,
) -> None:
    with translate_db_errors("writing the import checkpoint"):
        await pool.execute(
            "INSERT INTO public.legacy_import_checkpoints (file_sha256, path, total_lines, next_line, next_offset,"
            " rejected_bytes, counters) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (file_sha256) DO UPDATE SET path = EXCLUDED.path, total_lines = EXCLUDED.total_lines,"
            " next_line = EXCLUDED.next_line, next_offset = EXCLUDED.next_offset,"
            " rejected_bytes = EXCLUDED.rejected_bytes, counters = EXCLUDED.counters, updated_at = now(),"
            " finished_at = NULL,"
            " started_at = CASE WHEN $8 THEN now() ELSE public.legacy_import_checkpoints.started_at END",
            sha, str(path), total, next_line, next_offset, rejected_bytes, counts.to_json(), fresh,
        )


async def _finish(pool: asyncpg.Pool, sha: str, path: Path, counts: _Counts, total: int) -> None:
    """Mark the file done and leave the audit row, in one transaction."""
    with translate_db_errors("finishing the import"):
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE public.legacy_import_checkpoints SET finished_at = now(), updated_at = now()"
                " WHERE file_sha256 = $1", sha,
            )
            await record_audit(conn, "legacy-import", f"{getpass.getuser()}@{socket.gethostname()}",
                               {"file": str(path), "sha256": sha, "lines": total, **counts.to_json()})


# --- outcomes ---------------------------------------------------------------------------------------

async def _await_outcomes(
    pool: asyncpg.Pool, commands: list[Command], timeout_s: float
) -> tuple[int, int]:
    """Wait until every command has an outcome in the projection; (accepted, refused).

    ``timeout_s`` bounds the time without any new outcome (a large batch may take longer in all,
    but must keep moving); then ``CommandTimeout`` names the first command still waiting. Its
    batch is not checkpointed, so running the import again resends it, harmlessly."""
    waiting = {c.command_id: c for c in commands}
    accepted = refused = 0
    loop = asyncio.get_running_loop()
    last_progress = loop.time()
    delay = 0.005
    while waiting:
        with translate_db_errors("reading the outcomes of imported commands"):
            rows = await pool.fetch(
                "SELECT command_id, accepted FROM projection.command_outcomes WHERE command_id = ANY($1::text[])",
                list(waiting),
            )
        for r in rows:
            del waiting[r["command_id"]]
            if r["accepted"]:
                accepted += 1
            else:
                refused += 1
        if not waiting:
            break
        now = loop.time()
        if rows:
            last_progress, delay = now, 0.005
        elif now - last_progress > timeout_s:
            first = next(iter(waiting.values()))
            raise CommandTimeout(first.command_id, first.assessment_id, timeout_s)
        await asyncio.sleep(delay)  # polling a condition with back-off, bounded by timeout_s above
        delay = min(delay * 2, 0.1)
    return accepted, refused


# --- progress bar -------------------------------------------------------------------------------------

class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} lines/s" if speed is not None else "- lines/s", style="progress.data.speed")


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
        TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), disable=not enabled, transient=False,
    )


# --- the import --------------------------------------------------------------------------------------

async def import_legacy(
    settings: Settings,
    path: Path,
    *,
    batch_size: int = 1000,
    progress: bool = True,
    restart: bool = False,
    overwrite: bool = False,
    max_line_bytes: int | None = None,
    outcome_timeout_s: float | None = None,
    on_batch: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Import a JSON Lines legacy export; see the module docstring.

    A fresh import (no checkpoint to resume, or ``restart=True``) starts ``<file>.rejected.jsonl``
    anew; when that file already holds lines (an earlier run's, or another file's of the same name)
    it is refused with ``ValidationError`` unless ``overwrite=True``: those lines are someone's record
    of what was refused. Resuming cuts the file back to its checkpoint, as the module docstring says.

    ``outcome_timeout_s`` (default ``settings.command_timeout_s``): how long a batch may wait without
    any new outcome before ``CommandTimeout`` (a backlog on the commands topic delays them; running
    again resumes). ``on_batch`` is called with the running report after each checkpointed batch
    (for progress displays; an exception it raises interrupts the import, which a later call resumes).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    path = Path(path)
    started = time.perf_counter()
    limit = max_line_bytes or 2 * settings.max_request_bytes + 64 * 1024
    sha, total = await asyncio.to_thread(_scan, path)
    rejected_file = rejected_path(path)
    pool = await create_pool(settings, min_size=1, max_size=2)
    appender = Appender(settings)
    try:
        ckpt = None if restart else await _load_checkpoint(pool, sha)
        counts = _Counts.from_json(ckpt.counts) if ckpt is not None else _Counts()
        first_line = ckpt.next_line if ckpt is not None else 1
        bad: list[BadLine] = []

        def report(lines_done: int, already_done: bool = False) -> ImportReport:
            return ImportReport(
                path=path, sha256=sha, total_lines=total, first_line=first_line, lines_done=lines_done,
                lines_this_run=lines_done - (first_line - 1), already_done=already_done,
                imported=counts.imported, up_to_date=counts.up_to_date, store_ahead=counts.store_ahead,
                blank=counts.blank, rejected=counts.rejected, rejected_by_kind=dict(counts.by_kind),
                bad_lines=tuple(bad), rejected_file=rejected_file, commands_sent=counts.commands_sent,
                accepted=counts.accepted, refused=counts.refused, batches=counts.batches,
                elapsed_s=time.perf_counter() - started,
            )

        if ckpt is not None and ckpt.finished:
            log.info("%s (sha256 %s) was imported already; nothing to do (restart=True imports it again)", path, sha)
            return report(total, already_done=True)
        if ckpt is None and not overwrite and rejected_file.exists() and rejected_file.stat().st_size > 0:
            raise ValidationError(
                "rejected_file", f"{rejected_file} already exists and is not empty; pass --overwrite (overwrite=True) "
                "to replace it, or move it away first")
        await appender.start()
        if ckpt is None:
            await _save_checkpoint(pool, sha, path, total, 1, 0, 0, counts, fresh=True)
        offset = ckpt.next_offset if ckpt is not None else 0
        line_no = first_line
        with path.open("rb") as f, open(rejected_file, "ab") as rej, _progress_bar(progress) as bar:
            # Cut the rejected file back to what the checkpoint covers: lines after it are redone.
            keep = min(ckpt.rejected_bytes, rej.seek(0, os.SEEK_END)) if ckpt is not None else 0
            if ckpt is not None and keep < ckpt.rejected_bytes:
                log.warning("%s is shorter than the checkpoint says (%d < %d bytes): was it edited?",
                            rejected_file, keep, ckpt.rejected_bytes)
            rej.truncate(keep)
            rej.seek(0, os.SEEK_END)
            task = bar.add_task(f"importing {path.name}", total=total, completed=line_no - 1)
            f.seek(offset)
            while True:
                lines, next_offset = await asyncio.to_thread(_read_lines, f, line_no, batch_size, limit)
                if not lines:
                    break
                batch_counts = replace(counts, by_kind=Counter(counts.by_kind))
                entries = await _import_batch(settings, pool, appender, sha, lines, limit, batch_counts, bad,
                                              outcome_timeout_s or settings.command_timeout_s)
                rej.write(b"".join(entries))
                rej.flush()
                os.fsync(rej.fileno())
                batch_counts.batches += 1
                line_no += len(lines)
                # The checkpoint is written only after the batch's outcomes and its rejected lines
                # are durable: everything before next_line is done.
                await _save_checkpoint(pool, sha, path, total, line_no, next_offset, rej.tell(), batch_counts)
                counts = batch_counts
                bar.update(task, completed=line_no - 1)
                if on_batch is not None:
                    on_batch(report(line_no - 1))
        await _finish(pool, sha, path, counts, total)
        return report(line_no - 1)
    finally:
        await appender.stop()
        await pool.close()


async def _import_batch(
    settings: Settings, pool: asyncpg.Pool, appender: Appender, sha: str, lines: list[_Line], limit: int,
    counts: _Counts, bad: list[BadLine], outcome_timeout_s: float,
) -> list[bytes]:
    """Steps 1-4 of the module docstring for one batch; returns its rejected-file entries."""
    entries: list[bytes] = []

    def reject(line: _Line, r: Rejection) -> None:
        counts.rejected += 1
        counts.by_kind[r.kind.value] += 1
        entries.append(_rejected_entry(line, r))
        if len(bad) < MAX_BAD_LINES_IN_REPORT:
            bad.append(BadLine(line.number, r.kind.value, r.reason))

    good: list[tuple[_Line, ExportRecord]] = []
    for line in lines:
        if line.too_long is not None:
            reject(line, Rejection(RejectKind.TOO_LARGE, None,
                                   f"line is {line.too_long} bytes, above the limit of {limit}"))
        elif not line.raw.strip():
            counts.blank += 1
        else:
            parsed = parse_export_line(line.raw, max_bytes=limit)
            if isinstance(parsed, Rejection):
                reject(line, parsed)
            else:
                good.append((line, parsed))
    with translate_db_errors("reading the current state of imported assessments"):
        current = await fetch_assessments(pool, list({r.assessment_id for _, r in good}))
    now = datetime.now(UTC)
    sent: list[Command] = []
    for line, record in good:
        plan = plan_import(record, current.get(record.assessment_id), max_json_bytes=settings.max_request_bytes,
                           correlation_id=f"legacy-import:{sha[:16]}:{line.number}")
        if isinstance(plan, Rejection):
            reject(line, plan)
            continue
        _count_plan(plan, counts)
        for c in plan.commands:
            # The export's timestamps become the events' occurred_at (recorded_at: the processor's clock).
            await appender.command(CommandEnvelope(c, now, EventSource.MIGRATION, record.occurred_at(c)))
            sent.append(c)
    await appender.flush()
    counts.commands_sent += len(sent)
    # Waiting for the outcomes is also the import's back-pressure: live writers share the command
    # partitions, and a batch never runs more than one batch ahead of the processor.
    accepted, refused = await _await_outcomes(pool, sent, outcome_timeout_s)
    counts.accepted += accepted
    counts.refused += refused
    return entries


def _count_plan(plan: ImportPlan, counts: _Counts) -> None:
    if plan.commands:
        counts.imported += 1
    elif plan.store_ahead:
        counts.store_ahead += 1
    else:
        counts.up_to_date += 1
