"""The assessment commands: create and move assessments through their lifecycle, read them back."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.table import Table

from assessment_store.core import JSON, Assessment, Settings, State

from ._console import EXIT_DATAERR, EXIT_USAGE, err, out
from ._console import fail as _fail
from ._console import run_cli as _run
from ._options import ExpectedVersion, IdArg, JsonFlag
from ._root import app

if TYPE_CHECKING:  # imported where used: every command line loads this module (see cli/__init__.py)
    from assessment_store.client import AssessmentStore

T = TypeVar("T")


def _with_store(fn: Callable[[AssessmentStore], Awaitable[T]]) -> T:
    from assessment_store.client import AssessmentStore

    async def go() -> T:
        async with AssessmentStore(Settings()) as store:
            return await fn(store)

    return _run(go())


def _no_constant(name: str) -> JSON:
    raise ValueError(f"{name} is not a JSON number")


def _parse_json(text: str | None, what: str) -> JSON:
    """The JSON value of an option (or of @file); a one-line error and exit 1 for anything else.

    The store's own checks (depth, NUL, number ranges) follow when the command is sent."""
    if text is None:
        return None
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            raw = path.read_bytes()
        except OSError as e:
            _fail(f"cannot read {what} from {path}: {e}", EXIT_DATAERR)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            _fail(f"{what} file {path} is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start}", EXIT_DATAERR)
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        _fail(f"{what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", EXIT_DATAERR)
    except RecursionError:
        _fail(f"{what} is nested too deeply to read (the store accepts at most 64 levels)", EXIT_DATAERR)
    except ValueError as e:  # NaN/Infinity, integers beyond Python's 4,300 digits
        _fail(f"{what} is not valid JSON ({e})", EXIT_DATAERR)
    return None


def show_assessment(a: Assessment, as_json: bool) -> None:
    if as_json:
        out.print_json(data=a.to_json())
        return
    t = Table(show_header=False, box=None, pad_edge=False)
    for k, v in a.to_json().items():
        if v is None:
            continue
        t.add_row(f"[bold]{k}[/]", json.dumps(v) if isinstance(v, (dict, list)) else str(v))
    out.print(t)



# --- assessments ------------------------------------------------------------------------


@app.command("create")
def create(
    request: Annotated[str, typer.Option("--request", "-r", help="Request JSON, or @file.json.")] = "{}",
    assessment_id: Annotated[str | None, typer.Option("--id", help="Choose the id (default: a UUID).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a PENDING assessment and print its id."""
    body = _parse_json(request, "--request")
    aid = _with_store(lambda s: s.create_assessment(body, assessment_id=assessment_id))
    if as_json:
        out.print_json(data={"assessmentId": aid})
    else:
        out.print(aid)


@app.command("start")
def start(assessment_id: IdArg, expected_version: ExpectedVersion = None, as_json: JsonFlag = False) -> None:
    """PENDING -> PROCESSING."""
    show_assessment(_with_store(lambda s: s.start_assessment(assessment_id, expected_version=expected_version)), as_json)


@app.command("progress")
def progress(
    assessment_id: IdArg,
    percent: Annotated[int, typer.Argument(help="0-100.")],
    message: Annotated[str | None, typer.Option("--message", "-m")] = None,
    expected_version: ExpectedVersion = None,
    as_json: JsonFlag = False,
) -> None:
    """Record progress (0-100) of a PENDING or PROCESSING assessment."""
    show_assessment(
        _with_store(lambda s: s.update_progress(assessment_id, percent, message, expected_version=expected_version)),
        as_json,
    )


@app.command("complete")
def complete(
    assessment_id: IdArg,
    result: Annotated[str, typer.Option("--result", help="Result JSON, or @file.json.")] = "null",
    duration_ms: Annotated[int | None, typer.Option(help="Default: time since start.")] = None,
    expected_version: ExpectedVersion = None,
    as_json: JsonFlag = False,
) -> None:
    """PROCESSING -> COMPLETED with a result."""
    body = _parse_json(result, "--result")
    show_assessment(
        _with_store(lambda s: s.complete_assessment(assessment_id, body, duration_ms=duration_ms,
                                                     expected_version=expected_version)),
        as_json,
    )


@app.command("fail")
def fail(
    assessment_id: IdArg,
    error: Annotated[str, typer.Option("--error", "-e", help="What went wrong.")],
    retryable: Annotated[bool, typer.Option(help="Whether a retry may succeed.")] = False,
    expected_version: ExpectedVersion = None,
    as_json: JsonFlag = False,
) -> None:
    """PENDING or PROCESSING -> FAILED."""
    show_assessment(
        _with_store(lambda s: s.fail_assessment(assessment_id, error, retryable=retryable,
                                                 expected_version=expected_version)),
        as_json,
    )


@app.command("cancel")
def cancel(
    assessment_id: IdArg,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    expected_version: ExpectedVersion = None,
    as_json: JsonFlag = False,
) -> None:
    """PENDING or PROCESSING -> CANCELLED."""
    show_assessment(_with_store(lambda s: s.cancel_assessment(assessment_id, reason, expected_version=expected_version)), as_json)


@app.command("retry")
def retry(assessment_id: IdArg, expected_version: ExpectedVersion = None, as_json: JsonFlag = False) -> None:
    """FAILED -> PENDING, retry count + 1."""
    show_assessment(_with_store(lambda s: s.retry_assessment(assessment_id, expected_version=expected_version)), as_json)


@app.command("get")
def get(assessment_id: IdArg, as_json: JsonFlag = False) -> None:
    """Print an assessment's current state from the projection."""
    show_assessment(_with_store(lambda s: s.get_state(assessment_id)), as_json)


@app.command("wait")
def wait(
    assessment_id: IdArg,
    timeout: Annotated[float, typer.Option(help="Seconds; exit code 3 when it passes.")] = 30.0,
    as_json: JsonFlag = False,
) -> None:
    """Wait until the assessment is COMPLETED, FAILED or CANCELLED, then print it."""
    if not math.isfinite(timeout) or timeout <= 0:
        _fail(f"--timeout must be a positive, finite number of seconds, got {timeout}", EXIT_USAGE)
    show_assessment(_with_store(lambda s: s.wait_for_completion(assessment_id, timeout)), as_json)


@app.command("history")
def history(assessment_id: IdArg, as_json: JsonFlag = False) -> None:
    """Print an assessment's events: version, type, when, source and Kafka position."""
    rows = _with_store(lambda s: s.get_history(assessment_id))
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    t = Table(title=f"history of {assessment_id}")
    for col in ("v", "type", "occurred at", "source", "payload", "partition/offset"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r["version"]), r["type"], str(r["occurred_at"]), r["source"],
                  json.dumps(r["payload"])[:80], f"{r['kafka_partition']}/{r['kafka_offset']}")
    out.print(t)


@app.command("list")
def list_(
    state: Annotated[State | None, typer.Option(help="Only this state.", case_sensitive=False)] = None,
    as_json: JsonFlag = False,
) -> None:
    """List assessment ids, with counts per state."""

    async def go(s: AssessmentStore) -> tuple[list[str], dict[State, int]]:
        return await s.get_all_assessment_ids(state), await s.count_by_state()

    ids, counts = _with_store(go)
    if as_json:
        out.print_json(data={"ids": ids, "counts": {k.value: v for k, v in counts.items()}})
        return
    for i in ids:
        out.print(i)
    err.print(", ".join(f"{k.value}={v}" for k, v in counts.items()))


