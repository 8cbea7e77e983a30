"""``assessment-store events cat|tail TOPIC``: the records of any of the store's topics, decoded.

``cat`` reads from the beginning and exits at the end the topic had when it started; ``tail``
starts at the end and follows. Both read through ``client.TopicReader`` (assigned partitions, no
consumer group: nothing is committed, no group appears in ``lag``), the reader under client
subscriptions. Avro topics decode through the codecs and the schemas topic
(``streams.SchemaResolver``, one look-up per batch with unknown fingerprints); the legacy topic,
its reverse topic and the DLQ are JSON. A record that does not decode is printed with its bytes in
base64 and the error, never dropped: this is the tool to look at records nothing else can read.

``--json`` prints one object per line, the fields ``kcat -J`` users reach for: ``topic``,
``partition``, ``offset``, ``timestamp`` (ms), ``key``, ``type``, ``headers`` (kcat's flat
``[name, value, ...]`` list; a value that is not UTF-8 as ``base64:...``), and ``value`` (decoded)
or ``value_base64`` with ``error``.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from assessment_store.client import Position, Record, StartAt, TopicReader
from assessment_store.core import CodecError, Settings, UnresolvableSchema
from assessment_store.schemas import CommandCodec, EventCodec, OutcomeCodec, record_fingerprint
from assessment_store.streams import SchemaResolver, schemas_topic

from ._console import EXIT_USAGE, fail, run_cli
from ._options import AssessmentFilter

__all__ = ["TopicSpec", "events_app", "parse_since", "topic_specs"]

events_app = typer.Typer(
    help="Print the records of the store's topics, decoded: `events cat TOPIC`, `events tail TOPIC`.",
    no_args_is_help=True,
)

_FENCE_HEADER = "fence-epoch"
_HUMAN_WIDTH = 400


class Kind(enum.Enum):
    EVENT = "event"
    COMMAND = "command"
    OUTCOME = "outcome"
    JSON = "json"
    SCHEMA = "schema"


@dataclass(frozen=True)
class TopicSpec:
    short: str
    name: str
    kind: Kind


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic ``events`` reads, by short name."""
    s = settings
    return [
        TopicSpec("events", s.events_topic, Kind.EVENT),
        TopicSpec("commands", s.commands_topic, Kind.COMMAND),
        TopicSpec("outcomes", s.outcomes_topic, Kind.OUTCOME),
        TopicSpec("legacy", s.legacy_topic, Kind.JSON),
        TopicSpec("dlq", s.legacy_topic + ".dlq", Kind.JSON),
        TopicSpec("commands-dlq", s.commands_topic + ".dlq", Kind.COMMAND),
        TopicSpec("reverse", s.legacy_reverse_topic, Kind.JSON),
        TopicSpec("schemas", schemas_topic(s), Kind.SCHEMA),
    ]


def _find_topic(settings: Settings, name: str) -> TopicSpec:
    specs = topic_specs(settings)
    for spec in specs:
        if name in (spec.short, spec.name):
            return spec
    known = ", ".join(f"{s.short} ({s.name})" for s in specs)
    fail(f"unknown topic {name!r}; one of: {known}", EXIT_USAGE)


_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``10m``, ``2h``, ``1.5d`` (ago) or an ISO-8601 time (UTC when it names no zone)."""
    m = _RELATIVE.fullmatch(text.strip())
    if m:
        return (now or datetime.now(UTC)) - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00") if text.strip().endswith("Z") else text.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither a duration (10m, 2h, 1d) nor an ISO-8601 time") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _parse_offsets(values: list[str], topic: str) -> tuple[StartAt, list[int] | None]:
    """``--offset N`` (every partition) or ``--offset P:N`` (repeatable: only those partitions)."""
    if len(values) == 1 and re.fullmatch(r"\d{1,19}", values[0]):
        return int(values[0]), None
    per: dict[int, int] = {}
    for v in values:
        m = re.fullmatch(r"(\d{1,9}):(\d{1,19})", v.strip())
        if m is None:
            raise typer.BadParameter(f"{v!r}: give PARTITION:OFFSET (repeatable) or one OFFSET for every partition")
        if int(m.group(1)) in per:
            raise typer.BadParameter(f"partition {m.group(1)} is given twice")
        per[int(m.group(1))] = int(m.group(2))
    return Position.of(topic, per), sorted(per)


# --- decoding --------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return "base64:" + base64.b64encode(value).decode("ascii")
    return value


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode("ascii")


def _header(rec: Record, name: str) -> bytes | None:
    return next((v for k, v in rec.headers if k == name), None)


@dataclass
class View:
    """One record as printed."""

    rec: Record
    type: str | None
    value: Any = None
    error: str | None = None
    assessment_id: str | None = None
    summary: str = ""

    def as_json(self) -> dict[str, Any]:
        rec = self.rec
        doc: dict[str, Any] = {
            "topic": rec.topic, "partition": rec.partition, "offset": rec.offset, "timestamp": rec.timestamp,
            "key": _text(rec.key) if rec.key is not None else None, "type": self.type,
            "headers": [x for k, v in rec.headers for x in (k, _text(v))],
        }
        if self.error is None:
            doc["value"] = self.value
        else:
            doc["value"] = None
            doc["value_base64"] = base64.b64encode(rec.value or b"").decode("ascii")
            doc["error"] = self.error
        return doc

    def line(self) -> str:
        rec = self.rec
        at = datetime.fromtimestamp(rec.timestamp / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        key = _text(rec.key) if rec.key is not None else "-"
        if self.error is not None:
            raw = base64.b64encode(rec.value or b"").decode("ascii")
            body = f"UNDECODABLE ({self.error}) base64:{raw}"
        else:
            body = self.summary
        text = f"{rec.topic}/{rec.partition}/{rec.offset} {at} {key} {self.type or '-'} {body}"
        text = text.replace("\n", "\\n").replace("\r", "\\r")
        return text if len(text) <= _HUMAN_WIDTH else text[:_HUMAN_WIDTH - 1] + "…"


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


class Decoder:
    """Record -> ``View`` for one topic's format."""

    def __init__(self, settings: Settings, spec: TopicSpec) -> None:
        self.spec = spec
        self.events = EventCodec()
        self.commands = CommandCodec()
        self.outcomes = OutcomeCodec()
        codec = {Kind.EVENT: self.events.avro, Kind.COMMAND: self.commands.avro, Kind.OUTCOME: self.outcomes.avro}
        chosen = codec.get(spec.kind)
        self.resolver = SchemaResolver(settings, "dashboard", [chosen]) if chosen is not None else None

    async def learn(self, batch: list[Record]) -> None:
        if self.resolver is None:
            return
        fps = {fp for r in batch if (fp := record_fingerprint(r.value, r.headers)) is not None}
        if self.resolver.unknown(fps):
            await self.resolver.resolve(fps)

    def view(self, rec: Record) -> View:
        header_type = _header(rec, "type")
        typ = header_type.decode("utf-8", "replace") if header_type is not None else None
        if _header(rec, _FENCE_HEADER) is not None and not rec.value:
            epoch = _text(_header(rec, _FENCE_HEADER) or b"")
            return View(rec, typ or "ProcessorFence", {"fence_epoch": epoch}, summary=f"fence epoch {epoch}")
        try:
            return self._decode(rec, typ)
        except UnresolvableSchema as e:
            return View(rec, typ, error=str(e.at(rec.topic, rec.partition, rec.offset)))
        except CodecError as e:
            return View(rec, typ, error=e.reason)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            return View(rec, typ, error=f"{type(e).__name__}: {e}")

    def _decode(self, rec: Record, typ: str | None) -> View:
        kind = self.spec.kind
        if kind is Kind.EVENT:
            ev = self.events.decode(rec.value, rec.headers)
            value = _jsonable(ev)
            value["type"] = ev.type.value
            payload = _compact(value["payload"])
            return View(rec, ev.type.value, value, assessment_id=ev.assessment_id,
                        summary=f"v{ev.version} {payload}")
        if kind is Kind.COMMAND:
            env = self.commands.decode(rec.value, rec.headers)
            c = env.command
            value = {"type": type(c).__name__, "command": _jsonable(c), "issued_at": env.issued_at.isoformat(),
                     "source": env.source.value,
                     "occurred_at": env.occurred_at.isoformat() if env.occurred_at is not None else None}
            return View(rec, type(c).__name__, value, assessment_id=c.assessment_id,
                        summary=f"command {c.command_id} {_compact(value['command'])}")
        if kind is Kind.OUTCOME:
            o = self.outcomes.decode(rec.value, rec.headers)
            name = "accepted" if o.accepted else "rejected"
            detail = f"v{o.version}" if o.accepted else f"{o.error_type}: {o.error_message}"
            return View(rec, name, _jsonable(o), assessment_id=o.assessment_id,
                        summary=f"command {o.command_id} {detail}" + (" (duplicate)" if o.duplicate else ""))
        if not rec.value:
            raise CodecError("empty record value")
        if len(rec.value) > 16 * 1024 * 1024:
            raise CodecError("larger than 16 MiB: not parsed")
        doc = json.loads(rec.value.decode("utf-8"))
        if kind is Kind.SCHEMA:
            schema_name = doc.get("name") if isinstance(doc, dict) else None
            return View(rec, typ or (str(schema_name) if schema_name is not None else None), doc,
                        summary=f"schema {schema_name} ({_text(rec.key) if rec.key else '-'})")
        # Legacy emissions {"event", "data": {"assessmentId", ...}}, the reverse topic's messages (same
        # shape), and the DLQ's wrappers {"kind", "reason", "source", "payload" | "payloadBase64", ...}.
        assessment = None
        if isinstance(doc, dict):
            data = doc.get("data")
            if isinstance(data, dict) and isinstance(data.get("assessmentId"), str):
                assessment = data["assessmentId"]
            for field in ("event", "kind"):
                if typ is None and isinstance(doc.get(field), str):
                    typ = doc[field]
        return View(rec, typ, doc, assessment_id=assessment, summary=_compact(doc))


# --- the commands --------------------------------------------------------------------------


@dataclass
class _Query:
    spec: TopicSpec
    start: StartAt
    partitions: list[int] | None
    follow: bool
    types: frozenset[str]
    assessment: str | None
    as_json: bool
    limit: int | None


def _wanted(view: View, q: _Query) -> bool:
    if q.types and view.type not in q.types:
        return False
    if q.assessment is not None:
        key = view.rec.key.decode("utf-8", "replace") if view.rec.key is not None else None
        if q.assessment not in (view.assessment_id, key):
            return False
    return True


async def _run(settings: Settings, q: _Query, write: Callable[[str], None]) -> int:
    decoder = Decoder(settings, q.spec)
    printed = 0
    async with TopicReader(settings, q.spec.name, start=q.start, follow=q.follow, partitions=q.partitions,
                           principal="dashboard") as reader:
        while q.limit is None or printed < q.limit:
            batch = await reader.next_batch()
            if batch is None:
                break
            await decoder.learn(batch)
            for rec in batch:
                view = decoder.view(rec)
                if not _wanted(view, q):
                    continue
                write(json.dumps(view.as_json(), ensure_ascii=False, default=str) if q.as_json else view.line())
                printed += 1
                if q.limit is not None and printed >= q.limit:
                    break
    return printed


def _write(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


TopicArg = Annotated[str, typer.Argument(help="events, commands, outcomes, legacy, dlq, commands-dlq, reverse, "
                                         "schemas, or a full topic name of the store.")]
FromBeginning = Annotated[bool, typer.Option("--from-beginning", help="Start at the beginning of the log.")]
OffsetOpt = Annotated[list[str] | None, typer.Option(
    "--offset", help="PARTITION:OFFSET (repeatable; only those partitions), or one OFFSET for every partition.")]
SinceOpt = Annotated[str | None, typer.Option(
    "--since", help="Start at the first record at or after this time: 10m, 2h, 1d ago, or ISO-8601 (UTC by default).")]
TypeOpt = Annotated[list[str] | None, typer.Option(
    "--type", help="Only records of this type (repeatable): the event type, command name, accepted/rejected, the "
    "legacy event name, the DLQ kind.")]
JsonLines = Annotated[bool, typer.Option("--json", help="One JSON object per record and line (kcat -J's fields).")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Stop after printing N records.")]


def _query(settings: Settings, topic: str, *, default_start: StartAt, from_beginning: bool, offset: list[str] | None,
           since: str | None, follow: bool, types: list[str] | None, assessment: str | None, as_json: bool,
           limit: int | None) -> _Query:
    spec = _find_topic(settings, topic)
    if sum([from_beginning, bool(offset), since is not None]) > 1:
        fail("give at most one of --from-beginning, --offset and --since", EXIT_USAGE)
    start: StartAt = default_start
    partitions: list[int] | None = None
    try:
        if from_beginning:
            start = "beginning"
        elif offset:
            start, partitions = _parse_offsets(offset, spec.name)
        elif since is not None:
            start = parse_since(since)
    except typer.BadParameter as e:
        fail(str(e), EXIT_USAGE)
    return _Query(spec, start, partitions, follow, frozenset(types or ()), assessment, as_json, limit)


def _go(settings: Settings, q: _Query) -> None:
    try:
        run_cli(_run(settings, q, _write))
    except KeyboardInterrupt:
        pass  # the way out of following
    except BrokenPipeError:
        # `| head`: the reader went away. Point stdout at /dev/null so the interpreter's final
        # flush does not complain about the pipe too; exit 0 like cat and kcat.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


@events_app.command("cat")
def cat(
    topic: TopicArg,
    from_beginning: FromBeginning = False,
    offset: OffsetOpt = None,
    since: SinceOpt = None,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Keep printing new records (default: "
                                         "exit at the end the topic had when the command started).")] = False,
    types: TypeOpt = None,
    assessment: AssessmentFilter = None,
    as_json: JsonLines = False,
    limit: LimitOpt = None,
) -> None:
    """Print a topic's records from the beginning (or --offset / --since) and exit at its end."""
    settings = Settings()
    _go(settings, _query(settings, topic, default_start="beginning", from_beginning=from_beginning, offset=offset,
                         since=since, follow=follow, types=types, assessment=assessment, as_json=as_json, limit=limit))


@events_app.command("tail")
def tail(
    topic: TopicArg,
    from_beginning: FromBeginning = False,
    offset: OffsetOpt = None,
    since: SinceOpt = None,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Keep printing new records (default); "
                                         "--no-follow exits at the end the topic had at start.")] = True,
    types: TypeOpt = None,
    assessment: AssessmentFilter = None,
    as_json: JsonLines = False,
    limit: LimitOpt = None,
) -> None:
    """Follow a topic's new records (from its end, unless --from-beginning / --offset / --since)."""
    settings = Settings()
    _go(settings, _query(settings, topic, default_start="end", from_beginning=from_beginning, offset=offset,
                         since=since, follow=follow, types=types, assessment=assessment, as_json=as_json, limit=limit))
