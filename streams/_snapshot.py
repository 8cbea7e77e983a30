"""The command processor's snapshots: a compacted changelog of its folded state, so taking a
partition over reads the live state and the log written since, not the whole history.

Why a Kafka changelog and not PostgreSQL: the processor depends on nothing but Kafka (the
projector owns PostgreSQL, a layer above), its writes are already fenced by epoch on Kafka, and a
compacted topic is what Kafka Streams and faust keep their stores' changelogs in. The topic,
``<prefix>.processor-state`` (``assessments.processor-state`` beside ``assessments.commands``),
has the commands topic's partition count: partition *p* holds the state of command partition *p*.

Records (key → value, JSON; every record the processor writes carries ``writer-epoch``):

* ``a:<assessment id>`` → the folded ``Assessment`` of a live assessment, with its version.
* ``t:<seq>`` → a *terminal chunk*: up to 2,000 COMPLETED or CANCELLED assessments, their ids
  and versions by state. A finished assessment accepts no command, and ``decide`` refuses one from the state and
  version alone, with the same error; packing them keeps a load at one record per *live*
  assessment, plus one per 2,000 finished ones. When an assessment finishes, it goes into the next
  chunk and its ``a:`` record is deleted (a tombstone). Chunks under half full (one per snapshot
  write that finished assessments) are merged once 16 have built up, so their number does not
  grow with uptime. (Snapshots written before terminal chunks hold an ``a:`` *terminal marker*,
  state and version only; a load reads it, and the next write moves it into a chunk.)
* ``o:<seq>`` → a chunk of the idempotency record: the outcomes (command id → accepted with its
  version and event, or rejected with its error) added since the previous chunk. A chunk whose
  newest outcome has left the idempotency window is deleted (a tombstone).
* ``c:<epoch>`` → the checkpoint: "the ``a:``/``o:`` records before me hold the fold of events
  ``[0, events)`` and outcomes ``[0, outcomes)`` of this partition", with the writer's epoch (the
  fence in force at those offsets) and the next chunk number. One key per epoch, so a late
  checkpoint of an earlier owner never replaces a later owner's (see fencing below).
* ``f:<epoch>`` → a fence record (header ``fence-epoch``), appended at takeover with the fences
  of the events and outcomes partitions. Its key is never reused, so compaction never removes it.

Why loading is exact (``read_snapshot``, then ``CommandProcessor._rebuild``):

1. A checkpoint is written only after every ``a:`` and ``o:`` record of the states it covers is
   acknowledged, only after the command offsets of the batches it covers were committed, and only
   when no held-back event (point 3 of ``streams/_processor.py``) is pending. So its states
   include exactly the events of commands below the group's committed offset, which is what a
   full rebuild applies (the rest it holds back), and the tail read from its offsets continues
   that fold with the same held-back rule.
2. A crash while writing (records after the last checkpoint, no checkpoint for them) is harmless:
   those records hold states of committed commands, newer than the checkpoint's; the tail read
   skips every event whose version is at or below the loaded version of its assessment (already
   folded) and applies the rest in order.
3. The checkpoint's offsets are the end of what this processor folded *without a gap*: an
   append whose offset is not the next one (someone else wrote to the partition) freezes them,
   so a record the processor never folded is always in the tail.
4. Fencing: an earlier owner woken after a takeover (a zombie) may write ``a:`` records after
   the new owner's ``f:`` record. The reader applies ``LogFence`` in log order; such a record is
   fenced, and if it is the last of its key (compaction may have removed the good one before it)
   the snapshot of that partition is not used: full rebuild. A zombie only writes states it had
   committed, so anything it wrote before the new owner's fence is correct.
5. A record that does not decode, a missing checkpoint, or a checkpoint beyond the end of the
   events or outcomes partition (a topic recreated): full rebuild of that partition, logged and
   counted (``ProcessorStats.rebuild_fallbacks``). Never a guessed state.
6. Terminal chunks replace records, and a record is deleted only after its replacement is
   acknowledged, in a second send: the ``a:`` tombstones of the assessments a chunk holds, and the
   chunks a merge replaces, go after the new chunks' acknowledgements (sent together, a failed
   chunk could be followed by its tombstones, and the assessment would be in no record, while the
   checkpoint says its events are folded). After a full rebuild, the chunks of the snapshot it did
   not use are deleted only after the new checkpoint: until then that checkpoint is the one a load
   would use. A write cut short between the two sends leaves an assessment both in a chunk and in
   an ``a:`` record, or in two chunks: finished is final, so the chunk wins, and the next write
   deletes the ``a:`` record.

Compaction bounds what a load reads: segments of 16 MiB or one hour are cleaned once a fifth of
them is superseded, so a partition holds about one record per live assessment and one per 2,000
finished ones, plus at most one uncleaned segment (where an assessment that finished since may
still have its ``a:`` record and tombstone) and the tombstones of the last 10 minutes' cleaning.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from assessment_store.core import Assessment, CodecError, Outcome, Settings, State, json_loads

from ._fence import LogFence, Verdict

__all__ = [
    "Checkpoint", "LoadedSnapshot", "SnapshotScan", "TERMINAL_EPOCH", "chunk_key", "checkpoint_key", "decode_chunk",
    "decode_checkpoint", "decode_state", "decode_terminals", "encode_chunk", "encode_checkpoint", "encode_marker",
    "encode_state", "encode_terminals", "fence_key", "marker_state", "read_snapshot", "row_outcome", "row_time", "Row",
    "scan_partition", "state_key", "state_topic", "state_topic_config", "terminal_chunk_key",
]

FORMAT = 1
TERMINAL_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")
"""created_at/updated_at of the stand-in ``Assessment`` a terminal marker becomes for ``decide``
(which reads only its state and version)."""


def state_topic(settings: Settings) -> str:
    """``processor_state_topic``, else ``assessments.commands`` -> ``assessments.processor-state``."""
    if settings.processor_state_topic:
        return settings.processor_state_topic
    cmd = settings.commands_topic
    return (cmd.removesuffix(".commands") if cmd.endswith(".commands") else cmd) + ".processor-state"


def state_topic_config() -> dict[str, str]:
    # Compacted, never deleted by age; small segments so the cleaner gets to them (the active
    # segment is never cleaned). Tombstones are kept 10 minutes once cleaned, not Kafka's day: a
    # load reads one per assessment finished that long ago, and missing one is harmless (point 6:
    # an ``a:`` record is superseded by the terminal chunk anyway, and a deleted chunk left loaded
    # only repeats what a newer chunk holds, or outcomes the window drops).
    return {"cleanup.policy": "compact", "retention.ms": "-1", "segment.bytes": str(16 * 1024 * 1024),
            "segment.ms": str(3600 * 1000), "min.cleanable.dirty.ratio": "0.2",
            "delete.retention.ms": str(10 * 60 * 1000),
            # A state carries its request and result documents (up to max_request_bytes each).
            "max.message.bytes": str(4 * 1024 * 1024 + 4096)}


def state_key(aid: str) -> bytes:
    return b"a:" + aid.encode()


def chunk_key(seq: int) -> bytes:
    return b"o:%d" % seq


def terminal_chunk_key(seq: int) -> bytes:
    return b"t:%d" % seq


def checkpoint_key(epoch: int) -> bytes:
    return b"c:%d" % epoch


def fence_key(epoch: int) -> bytes:
    return b"f:%d" % epoch


# Looked up by value: a takeover reads one state per assessment, and ``State(value)`` costs more
# than the rest of decoding a terminal marker.
_STATES = {s.value: s for s in State}
_TERMINAL_STATES = {s.value: s for s in State if s.terminal}


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_dt(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def encode_state(a: Assessment) -> bytes:
    return _dumps({"v": FORMAT, "a": [
        a.assessment_id, a.state.value, a.version, a.progress, a.message, _dt(a.created_at), _dt(a.updated_at),
        a.request_data, a.result_data, a.error_message, a.retry_count, a.duration, _dt(a.started_at),
        _dt(a.finished_at), a.retryable, a.cancel_reason, a.processing_timeout_ms, a.max_retries, a.last_event_id,
    ]})


def encode_marker(state: State, version: int) -> bytes:
    """An ``a:`` terminal marker: what snapshots held for a finished assessment before terminal
    chunks (loads still read it, and move it to a terminal chunk)."""
    return _dumps({"v": FORMAT, "t": [state.value, version]})


def marker_state(aid: str, state: State, version: int) -> Assessment:
    """The stand-in ``decide`` sees for a terminal marker: it refuses every command from state and
    version alone (``VersionConflict``, ``InvalidTransition``), as it would on the full state."""
    return Assessment(assessment_id=aid, state=state, version=version, progress=100 if state is State.COMPLETED else 0,
                      message=None, created_at=TERMINAL_EPOCH, updated_at=TERMINAL_EPOCH, request_data=None)


_loads = json_loads()  # a takeover decodes one document per assessment and per idempotency chunk


def _document(raw: bytes) -> dict[str, Any]:
    try:
        doc = _loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CodecError(f"not JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("v") != FORMAT:
        raise CodecError(f"not a snapshot record of format {FORMAT}")
    return doc


def decode_state(aid: str, raw: bytes) -> Assessment | tuple[State, int]:
    """An ``a:`` record: the folded state, or (state, version) of a terminal marker."""
    doc = _document(raw)
    try:
        if "t" in doc:
            state, version = doc["t"]
            st = _TERMINAL_STATES.get(state)
            if st is None or not isinstance(version, int):
                raise ValueError(f"a terminal marker of {state!r}, not a terminal state")
            return st, version
        f = doc["a"]
        if len(f) != 19 or f[0] != aid or not isinstance(f[2], int):
            raise ValueError("fields do not match the key")
        created, updated = _parse_dt(f[5]), _parse_dt(f[6])
        if created is None or updated is None:
            raise ValueError("no created_at/updated_at")
        return Assessment(
            assessment_id=f[0], state=_STATES[f[1]], version=f[2], progress=f[3], message=f[4], created_at=created,
            updated_at=updated, request_data=f[7], result_data=f[8], error_message=f[9], retry_count=f[10],
            duration=f[11], started_at=_parse_dt(f[12]), finished_at=_parse_dt(f[13]), retryable=f[14],
            cancel_reason=f[15], processing_timeout_ms=f[16], max_retries=f[17], last_event_id=f[18],
        )
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise CodecError(f"state of {aid!r}: {type(e).__name__}: {e}") from e


def encode_chunk(outcomes: Iterable[Outcome]) -> bytes:
    """An idempotency chunk: one row per outcome, ``[command id, assessment id, command offset,
    processed at, accepted, version, event id]`` or ``[..., accepted, error type, error message, error
    details]``.

    Written by orjson when it is installed (0.27 against 1.7 µs an outcome: a drain writes one per
    command), with the same document ``json`` writes, to the character for every value a chunk holds
    but floats (whose text may differ, e.g. ``1e16`` for ``1e+16``, and read back the same). Where
    the two would not agree, ``json`` decides: error details are first checked by ``json`` (NaN and
    infinities raise there, where orjson would write null), and anything orjson refuses (an integer
    beyond 64 bits, a key that is not a string) makes the whole chunk go through ``json``."""
    rows: list[list[Any]] = []
    for o in outcomes:
        row: list[Any] = [o.command_id, o.assessment_id, o.command_offset, o.processed_at, o.accepted]
        if o.accepted:
            row += [o.version, o.event_id]
        else:
            if o.error_details is not None and _fast_dumps is not None:
                _dumps(o.error_details)  # json's verdict on what orjson would write differently
            row += [o.error_type, o.error_message, o.error_details]
        rows.append(row)
    doc = {"v": FORMAT, "o": rows}
    if _fast_dumps is not None:
        try:
            return _fast_dumps(doc)
        except TypeError:  # orjson.JSONEncodeError: json writes what orjson cannot
            pass
    for row in rows:
        row[3] = _dt(row[3])
    return _dumps(doc)


def _orjson_dumps() -> Callable[[Any], bytes] | None:
    # The server extra brings orjson; the client's base install (which imports this package) has none.
    try:
        import orjson
    except ImportError:
        return None
    dumps: Callable[[Any], bytes] = orjson.dumps
    return dumps


_fast_dumps = _orjson_dumps()


def encode_terminals(entries: Iterable[tuple[str, State, int]]) -> bytes:
    """A terminal chunk: finished assessments by state, as two parallel lists, ids and versions
    (``{"v": 1, "t": {"COMPLETED": [[ids], [versions]], ...}}``): a load turns each pair into its
    entries with C loops (``decode_terminals``), at about a tenth of a per-entry check's cost."""
    by_state: dict[str, tuple[list[str], list[int]]] = {}
    for aid, state, version in entries:
        ids, versions = by_state.setdefault(state.value, ([], []))
        ids.append(aid)
        versions.append(version)
    return _dumps({"v": FORMAT, "t": {state: [ids, versions] for state, (ids, versions) in by_state.items()}})


def decode_terminals(raw: bytes) -> dict[str, tuple[State, int]]:
    """A terminal chunk's assessments, all checked (a malformed chunk raises ``CodecError``)."""
    doc = _document(raw)
    groups = doc.get("t")
    if not isinstance(groups, dict) or not groups:
        raise CodecError("terminal chunk: no entries")
    out: dict[str, tuple[State, int]] = {}
    for value, pair in groups.items():
        state = _TERMINAL_STATES.get(value)
        if state is None:
            raise CodecError(f"terminal chunk: {str(value)[:50]!r} is not a terminal state")
        if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], list) \
                or not isinstance(pair[1], list) or len(pair[0]) != len(pair[1]) or not pair[0]:
            raise CodecError(f"terminal chunk: malformed {value} entries")
        ids, versions = pair
        # Types compared exactly, through map and set (C loops): ids are strings, versions integers.
        if set(map(type, ids)) != {str} or set(map(type, versions)) != {int}:
            raise CodecError(f"terminal chunk: malformed {value} entries (ids must be strings, versions integers)")
        out.update(zip(ids, zip(itertools.repeat(state), versions)))
    return out


Row = list[Any]
"""One outcome of a chunk as stored: [command id, assessment id, command offset, processed at (ISO),
accepted, then version and event id, or error type, message and details]. Loaded as is and made an
``Outcome`` only when its command id is looked up (``row_outcome``): a takeover may load hundreds
of thousands of them and look up a handful."""


def _check_row(row: Any) -> None:
    # Types compared exactly (a JSON document has no subclasses), the accepted flag by identity
    # (JSON gives the two bool singletons): a takeover checks up to 50,000 rows per partition.
    if type(row) is not list:
        raise CodecError(f"idempotency chunk: malformed row {str(row)[:200]}")
    n = len(row)
    if (n != 7 and n != 8) or row[4] is not (n == 7) or type(row[0]) is not str or type(row[1]) is not str \
            or type(row[2]) is not int or type(row[3]) is not str:
        raise CodecError(f"idempotency chunk: malformed row {str(row)[:200]}")
    _fromisoformat(row[3])  # ValueError when it is not a time


_fromisoformat = datetime.fromisoformat


def row_outcome(row: Row) -> Outcome:
    at = datetime.fromisoformat(row[3])
    if row[4]:
        return Outcome(command_id=row[0], assessment_id=row[1], accepted=True, processed_at=at,
                       command_offset=row[2], version=row[5], event_id=row[6])
    return Outcome(command_id=row[0], assessment_id=row[1], accepted=False, processed_at=at, command_offset=row[2],
                   error_type=row[5], error_message=row[6], error_details=row[7])


def row_time(row: Row) -> float:
    return datetime.fromisoformat(row[3]).timestamp()


def decode_chunk(raw: bytes) -> list[Row]:
    """A chunk's rows, each checked (a malformed one raises ``CodecError``: the snapshot is not used)."""
    doc = _document(raw)
    rows = doc.get("o")
    if not isinstance(rows, list) or not rows:
        raise CodecError("idempotency chunk: no rows")
    try:
        for row in rows:
            _check_row(row)
    except (TypeError, ValueError) as e:
        raise CodecError(f"idempotency chunk: {type(e).__name__}: {e}") from e
    return rows


@dataclass(frozen=True)
class Checkpoint:
    epoch: int
    """the writer's fence epoch: the fence in force at ``events_offset`` and ``outcomes_offset``"""
    events_offset: int
    outcomes_offset: int
    next_chunk: int


def encode_checkpoint(c: Checkpoint) -> bytes:
    return _dumps({"v": FORMAT, "epoch": c.epoch, "events": c.events_offset, "outcomes": c.outcomes_offset,
                   "chunk": c.next_chunk})


def decode_checkpoint(raw: bytes) -> Checkpoint:
    doc = _document(raw)
    try:
        c = Checkpoint(int(doc["epoch"]), int(doc["events"]), int(doc["outcomes"]), int(doc["chunk"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CodecError(f"checkpoint: {type(e).__name__}: {e}") from e
    if min(c.epoch, c.events_offset, c.outcomes_offset, c.next_chunk) < 0:
        raise CodecError("checkpoint: negative field")
    return c


@dataclass
class SnapshotScan:
    """What one partition of the state topic holds: the last accepted value per key."""

    values: dict[bytes, bytes | None] = field(default_factory=dict)
    fenced_last: set[bytes] = field(default_factory=set)
    """keys whose latest record was written by a fenced writer (a zombie)"""
    records: int = 0
    fence: LogFence = field(default_factory=LogFence)

    @property
    def chunk_seqs(self) -> list[int]:
        """The idempotency chunks on the partition (not deleted)."""
        return self._seqs(b"o:")

    @property
    def terminal_chunk_seqs(self) -> list[int]:
        """The terminal chunks on the partition (not deleted)."""
        return self._seqs(b"t:")

    def _seqs(self, prefix: bytes) -> list[int]:
        return sorted(int(k[2:]) for k, v in self.values.items() if k.startswith(prefix) and v is not None)

    @property
    def next_terminal_chunk(self) -> int:
        """A terminal chunk number above every one seen, deleted ones included."""
        return max((int(k[2:]) + 1 for k in self.values if k.startswith(b"t:")), default=0)

    @property
    def state_records(self) -> set[str]:
        """The assessments with an ``a:`` record on the partition (not deleted; a key that is not
        UTF-8 names no assessment the processor can hold, and is left alone)."""
        out = set()
        for k, v in self.values.items():
            if k.startswith(b"a:") and v is not None:
                try:
                    out.add(k[2:].decode())
                except UnicodeDecodeError:
                    continue
        return out


@dataclass
class LoadedSnapshot:
    checkpoint: Checkpoint
    states: dict[str, Assessment]
    terminal: dict[str, tuple[State, int]]
    outcomes: list[Row]
    """the idempotency chunks' rows, oldest first (chunks in number order, rows in write order)"""
    chunks: dict[int, float]
    """chunk number -> timestamp of its newest outcome (when it may be deleted)"""
    terminal_chunks: dict[int, list[str]]
    """terminal chunk number -> the assessments it holds"""


async def scan_partition(reader: AIOKafkaConsumer, tp: TopicPartition, end: int) -> SnapshotScan:
    """Read partition ``tp`` of the state topic from its start to ``end`` (the reader is assigned it)."""
    scan = SnapshotScan()
    await reader.seek_to_beginning(tp)
    while await reader.position(tp) < end:
        fetched = await reader.getmany(tp, timeout_ms=500)
        for rec in fetched.get(tp, []):
            if rec.offset >= end:
                break
            scan.records += 1
            verdict, _ = scan.fence.judge(tp, rec.headers)
            key = rec.key or b""
            if verdict is Verdict.FENCE:
                continue
            if verdict is Verdict.FENCED:
                scan.fenced_last.add(key)
                continue
            scan.fenced_last.discard(key)
            scan.values[key] = rec.value
    return scan


def read_snapshot(scan: SnapshotScan) -> tuple[LoadedSnapshot | None, str, str]:
    """The snapshot a scan holds, or (None, reason label, why) when it must not be used."""
    fenced = sorted(k for k in scan.fenced_last if not k.startswith((b"c:", b"f:")))
    if fenced:
        return None, "fenced_writer", f"the latest record of {fenced[0]!r} was written by a fenced processor"
    checkpoints = [int(k[2:]) for k, v in scan.values.items() if k.startswith(b"c:") and v is not None]
    if not checkpoints:
        return None, "no_checkpoint", "no checkpoint"
    states: dict[str, Assessment] = {}
    terminal: dict[str, tuple[State, int]] = {}
    chunk_rows: dict[int, list[Row]] = {}
    terminal_chunks: dict[int, list[str]] = {}
    try:
        checkpoint = decode_checkpoint(scan.values[checkpoint_key(max(checkpoints))] or b"")
        for key, raw in scan.values.items():
            if raw is None:
                continue
            if key.startswith(b"a:"):
                aid = key[2:].decode()
                s = decode_state(aid, raw)
                if isinstance(s, Assessment):
                    states[aid] = s
                else:
                    terminal[aid] = s
            elif key.startswith(b"o:"):
                chunk_rows[int(key[2:])] = decode_chunk(raw)
            elif key.startswith(b"t:"):
                entries = decode_terminals(raw)
                terminal_chunks[int(key[2:])] = list(entries)
                terminal.update(entries)
    except (CodecError, UnicodeDecodeError, ValueError) as e:
        return None, "undecodable", f"undecodable record: {e}"
    # Finished is final: an assessment in a terminal chunk has no later state. An ``a:`` record of
    # it is an earlier state whose tombstone a write cut short had not yet reached (point 6).
    for aid in terminal:
        states.pop(aid, None)
    outcomes = [row for seq in sorted(chunk_rows) for row in chunk_rows[seq]]
    # A chunk's rows are in write order: its last is its newest.
    chunks = {seq: row_time(rows[-1]) for seq, rows in chunk_rows.items()}
    return LoadedSnapshot(checkpoint, states, terminal, outcomes, chunks, terminal_chunks), "", ""
