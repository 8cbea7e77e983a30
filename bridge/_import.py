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
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
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

from assessment_store.core import (
    Command,
    CommandEnvelope,
    CommandTimeout,
    EventSource,
    Settings,
    ValidationError,
)
from assessment_store.projections import (
    create_pool,
    fetch_assessments,
    fetch_outcome_acceptance,
    translate_db_errors,
)

from ._checkpoints import Checkpoint, CheckpointStore, ImportCounts
from ._legacy import RejectKind, Rejection
from assessment_store.streams import Appender
from ._snapshot import ExportRecord, ImportPlan, parse_export_line, plan_import

__all__ = ["BadLine", "ImportReport", "LegacyImport", "import_legacy", "rejected_path"]

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
            outcomes = await fetch_outcome_acceptance(pool, list(waiting))
        for command_id, was_accepted in outcomes.items():
            del waiting[command_id]
            if was_accepted:
                accepted += 1
            else:
                refused += 1
        if not waiting:
            break
        now = loop.time()
        if outcomes:
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
    job = LegacyImport(settings, Path(path), batch_size=batch_size, progress=progress, overwrite=overwrite,
                       max_line_bytes=max_line_bytes, outcome_timeout_s=outcome_timeout_s, on_batch=on_batch)
    return await job.run(restart=restart)


class LegacyImport:
    """One run of the import of one export file: resume from its checkpoint, then batch by batch."""

    def __init__(
        self, settings: Settings, path: Path, *, batch_size: int, progress: bool, overwrite: bool,
        max_line_bytes: int | None, outcome_timeout_s: float | None,
        on_batch: Callable[[ImportReport], None] | None,
    ) -> None:
        self.settings = settings
        self.path = path
        self.batch_size = batch_size
        self.progress = progress
        self.overwrite = overwrite
        self.line_limit = max_line_bytes or 2 * settings.max_request_bytes + 64 * 1024
        self.outcome_timeout_s = outcome_timeout_s or settings.command_timeout_s
        self.on_batch = on_batch
        self.rejected_file = rejected_path(path)
        self.started = time.perf_counter()
        self.sha256 = ""
        self.total_lines = 0
        self.first_line = 1
        self.counts = ImportCounts()
        self.bad: list[BadLine] = []

    async def run(self, *, restart: bool) -> ImportReport:
        self.sha256, self.total_lines = await asyncio.to_thread(_scan, self.path)
        pool = await create_pool(self.settings, min_size=1, max_size=2)
        appender = Appender(self.settings)
        try:
            checkpoints = CheckpointStore(pool, self.sha256, self.path, self.total_lines)
            ckpt = None if restart else await checkpoints.load()
            if ckpt is not None:
                self.counts, self.first_line = ckpt.counts, ckpt.next_line
                if ckpt.finished:
                    log.info("%s (sha256 %s) was imported already; nothing to do (restart=True imports it again)",
                             self.path, self.sha256)
                    return self.report(self.total_lines, already_done=True)
            elif not self.overwrite and self.rejected_file.exists() and self.rejected_file.stat().st_size > 0:
                raise ValidationError(
                    "rejected_file", f"{self.rejected_file} already exists and is not empty; pass --overwrite "
                    "(overwrite=True) to replace it, or move it away first")
            await appender.start()
            if ckpt is None:
                await checkpoints.save(next_line=1, next_offset=0, rejected_bytes=0, counts=self.counts, fresh=True)
            lines_done = await self._import_lines(pool, appender, checkpoints, ckpt)
            await checkpoints.finish(self.counts)
            return self.report(lines_done)
        finally:
            await appender.stop()
            await pool.close()

    def report(self, lines_done: int, already_done: bool = False) -> ImportReport:
        c = self.counts
        return ImportReport(
            path=self.path, sha256=self.sha256, total_lines=self.total_lines, first_line=self.first_line,
            lines_done=lines_done, lines_this_run=lines_done - (self.first_line - 1), already_done=already_done,
            imported=c.imported, up_to_date=c.up_to_date, store_ahead=c.store_ahead, blank=c.blank,
            rejected=c.rejected, rejected_by_kind=dict(c.by_kind), bad_lines=tuple(self.bad),
            rejected_file=self.rejected_file, commands_sent=c.commands_sent, accepted=c.accepted,
            refused=c.refused, batches=c.batches, elapsed_s=time.perf_counter() - self.started,
        )

    async def _import_lines(
        self, pool: asyncpg.Pool, appender: Appender, checkpoints: CheckpointStore, ckpt: Checkpoint | None,
    ) -> int:
        """Every batch from the checkpoint (or line 1) to the end; returns the number of lines done."""
        line_no = self.first_line
        with self.path.open("rb") as f, open(self.rejected_file, "ab") as rej, _progress_bar(self.progress) as bar:
            # Cut the rejected file back to what the checkpoint covers: lines after it are redone.
            keep = min(ckpt.rejected_bytes, rej.seek(0, os.SEEK_END)) if ckpt is not None else 0
            if ckpt is not None and keep < ckpt.rejected_bytes:
                log.warning("%s is shorter than the checkpoint says (%d < %d bytes): was it edited?",
                            self.rejected_file, keep, ckpt.rejected_bytes)
            rej.truncate(keep)
            rej.seek(0, os.SEEK_END)
            task = bar.add_task(f"importing {self.path.name}", total=self.total_lines, completed=line_no - 1)
            f.seek(ckpt.next_offset if ckpt is not None else 0)
            while True:
                lines, next_offset = await asyncio.to_thread(_read_lines, f, line_no, self.batch_size, self.line_limit)
                if not lines:
                    break
                # The batch counts on a copy: the running counts change only once the batch is checkpointed.
                batch_counts = replace(self.counts, by_kind=Counter(self.counts.by_kind))
                entries = await _import_batch(self.settings, pool, appender, self.sha256, lines, self.line_limit,
                                              batch_counts, self.bad, self.outcome_timeout_s)
                rej.write(b"".join(entries))
                rej.flush()
                os.fsync(rej.fileno())
                batch_counts.batches += 1
                line_no += len(lines)
                # The checkpoint is written only after the batch's outcomes and its rejected lines
                # are durable: everything before next_line is done.
                await checkpoints.save(next_line=line_no, next_offset=next_offset, rejected_bytes=rej.tell(),
                                       counts=batch_counts)
                self.counts = batch_counts
                bar.update(task, completed=line_no - 1)
                if self.on_batch is not None:
                    self.on_batch(self.report(line_no - 1))
        return line_no - 1


async def _import_batch(
    settings: Settings, pool: asyncpg.Pool, appender: Appender, sha: str, lines: list[_Line], limit: int,
    counts: ImportCounts, bad: list[BadLine], outcome_timeout_s: float,
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


def _count_plan(plan: ImportPlan, counts: ImportCounts) -> None:
    if plan.commands:
        counts.imported += 1
    elif plan.store_ahead:
        counts.store_ahead += 1
    else:
        counts.up_to_date += 1
