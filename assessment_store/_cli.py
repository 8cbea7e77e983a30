"""The ``assessment-store`` command line."""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.table import Table

from ._config import Settings
from ._console import err, out
from ._console import fail as _fail
from ._console import run_cli as _run
from ._console import serve_forever as _serve_forever
from ._errors import AssessmentStoreError, ServiceFailed
from ._model import JSON, Assessment, State
from ._store import AssessmentStore

T = TypeVar("T")

app = typer.Typer(
    help="Event-sourced assessment store on Apache Kafka and PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        sys.stdout.write(f"assessment-store {__version__}\n")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Event-sourced assessment store on Apache Kafka and PostgreSQL."""
stack_app = typer.Typer(help="The local stack: Kafka, PostgreSQL and the projector, without Docker.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")


def _mount_bridge() -> None:
    # Imported here: the role package's CLI is an add-on of this one, loaded when the app is built.
    from assessment_store.bridge import bridge_app
    from assessment_store.bridge._cli import import_  # the CLI's own pieces: they move with the CLI
    from assessment_store.bridge._flags_cli import flags_app

    app.add_typer(bridge_app, name="bridge")
    app.add_typer(flags_app, name="flags")
    # The name for the import, beside `bridge import`.
    app.command("import-legacy", help="Import a legacy JSON Lines export (same as `bridge import`).")(import_)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
IdArg = Annotated[str, typer.Argument(help="Assessment id.")]
ExpectedVersion = Annotated[
    int | None, typer.Option("--expected-version", help="Refuse unless the assessment is at this version.")
]


def _with_store(fn: Callable[[AssessmentStore], Awaitable[T]]) -> T:
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
            _fail(f"cannot read {what} from {path}: {e}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            _fail(f"{what} file {path} is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start}")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        _fail(f"{what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})")
    except RecursionError:
        _fail(f"{what} is nested too deeply to read (the store accepts at most 64 levels)")
    except ValueError as e:  # NaN/Infinity, integers beyond Python's 4,300 digits
        _fail(f"{what} is not valid JSON ({e})")
    return None


def _show(a: Assessment, as_json: bool) -> None:
    if as_json:
        out.print_json(data=a.to_json())
        return
    t = Table(show_header=False, box=None, pad_edge=False)
    for k, v in a.to_json().items():
        if v is None:
            continue
        t.add_row(f"[bold]{k}[/]", json.dumps(v) if isinstance(v, (dict, list)) else str(v))
    out.print(t)


# --- stack ------------------------------------------------------------------------------

ServicesArg = Annotated[
    list[str] | None,
    typer.Argument(help="kafka, postgres, processor, projector, bridge and/or reverse-sync (default: all; reverse-sync only with ASSESSMENT_STORE_REVERSE_SYNC=true or when running).", show_default=False),
]


@stack_app.command("up")
def stack_up(
    services: ServicesArg = None,
    secure: Annotated[bool, typer.Option(
        "--secure", help="Kafka with authentication (SASL_SSL, SCRAM, TLS, ACLs per principal); decided at the "
        "broker's first start, like ASSESSMENT_STORE_KAFKA_SECURE=true.")] = False,
    brokers: Annotated[int | None, typer.Option(
        "--brokers", min=1, max=9, help="Run Kafka as a cluster of this many brokers (KRaft on loopback; topics get "
        "3 replicas and min.insync.replicas=2 from 3 brokers on); decided at the cluster's first start, like "
        "ASSESSMENT_STORE_KAFKA_BROKERS.")] = None,
) -> None:
    """Start the services that are not running (fetching Kafka's jars on first use). Idempotent."""
    from assessment_store.stack import Stack

    t0 = time.monotonic()
    chosen: dict[str, object] = {}
    if secure:
        chosen["kafka_secure"] = True
    if brokers is not None:
        chosen["kafka_brokers"] = brokers
    settings = Settings(**chosen)  # type: ignore[arg-type]
    try:
        Stack(settings).up(services, log=lambda m: err.print(f"[dim]{m}[/]"))
    except ServiceFailed as e:
        _fail(f"{e}\nnext: `assessment-store stack logs {e.service}` shows its whole log; "
              f"`assessment-store stack status` shows what runs")
    except PermissionError as e:
        _fail(f"{e}\nnext: make {settings.data_dir.resolve()} writable by this account, or choose another data "
              "directory with ASSESSMENT_STORE_DATA_DIR")
    except (AssessmentStoreError, ValueError, OSError) as e:
        _fail(str(e))
    err.print(f"stack up in {time.monotonic() - t0:.1f} s")
    stack_status(as_json=False)


_SECRET_SETTINGS = {"api_token", "api_read_token"}


def stack_env_lines(settings: Settings) -> list[str]:
    """``export`` lines that point another process at this stack: the data directory (where the
    generated passwords live) and every setting that differs from its default, secrets excepted."""
    defaults = Settings.model_construct()
    lines = [f"export ASSESSMENT_STORE_DATA_DIR={shlex.quote(str(settings.data_dir.resolve()))}"]
    for name in sorted(Settings.model_fields):
        if name in ("data_dir", *_SECRET_SETTINGS) or "password" in name:
            continue
        value = getattr(settings, name)
        if value is None or value == getattr(defaults, name, None):
            continue
        text = str(value.resolve()) if isinstance(value, Path) else str(value)
        lines.append(f"export ASSESSMENT_STORE_{name.upper()}={shlex.quote(text)}")
    return lines


@stack_app.command("env")
def stack_env() -> None:
    """Print the exports a service elsewhere on the machine needs to reach this stack:
    eval "$(assessment-store stack env)"."""
    sys.stdout.write("\n".join(stack_env_lines(Settings())) + "\n")


@stack_app.command("down")
def stack_down(services: ServicesArg = None) -> None:
    """Stop the services (projector first, PostgreSQL last). Data stays in the data directory."""
    from assessment_store.stack import Stack

    try:
        Stack(Settings()).down(services, log=lambda m: err.print(f"[dim]{m}[/]"))
    except (AssessmentStoreError, ValueError) as e:
        _fail(str(e))


@stack_app.command("purge")
def stack_purge(
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: delete all Kafka and PostgreSQL data.")] = False,
) -> None:
    """Stop the stack and delete its data directory. Needs --yes."""
    from assessment_store.stack import Stack

    settings = Settings()
    if not yes:
        _fail(f"this deletes every event and projection under {settings.data_dir.resolve()}; add --yes to confirm")
    Stack(settings).purge(log=lambda m: err.print(f"[dim]{m}[/]"))


@stack_app.command("credentials")
def stack_credentials(
    principal: Annotated[str | None, typer.Argument(
        help="admin, processor, client, projector, bridge, reverse-sync, dashboard or legacy-tap.",
        show_default=False)] = None,
) -> None:
    """Where a kafka_secure stack keeps its Kafka credentials; with PRINCIPAL, the variables a process
    outside the stack sets to connect as it (`eval "$(assessment-store stack credentials client)"`).
    They include the password: print them only where they are meant to go."""
    from assessment_store.streams import PRINCIPALS
    from assessment_store.streams import read_credentials

    s = Settings()
    if not s.kafka_secure_mode or not s.kafka_credentials_file.exists():
        _fail(f"no authenticated Kafka under {s.data_dir.resolve()}: `stack up --secure` makes one")
    if principal is None:
        out.print(f"credentials (principal:password, mode 0600): {s.kafka_credentials_file}")
        out.print(f"CA certificate: {s.kafka_ca_file}")
        out.print(f"bootstrap: {s.kafka_bootstrap} (SASL_SSL, SCRAM-SHA-512)")
        out.print(f"principals: {', '.join(PRINCIPALS)}")
        return
    password = read_credentials(s.kafka_credentials_file).get(principal)
    if principal not in PRINCIPALS or password is None:
        _fail(f"unknown principal {principal!r}; known: {', '.join(PRINCIPALS)}")
    values = {
        "ASSESSMENT_STORE_BOOTSTRAP_SERVERS": s.kafka_bootstrap,
        "ASSESSMENT_STORE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "ASSESSMENT_STORE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "ASSESSMENT_STORE_KAFKA_USERNAME": principal,
        "ASSESSMENT_STORE_KAFKA_PASSWORD": password,
        "ASSESSMENT_STORE_KAFKA_SSL_CAFILE": str(s.kafka_ca_file),
        # The Node tap's names (bridge/node/src/options.js).
        "KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_USERNAME": principal,
        "KAFKA_PASSWORD": password,
        "KAFKA_SSL_CAFILE": str(s.kafka_ca_file),
    }
    sys.stdout.write("".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items()))


@stack_app.command("status")
def stack_status(as_json: JsonFlag = False) -> None:
    """What runs, where, with pids, ports, data and log paths. Exit code 1 if anything is down."""
    from assessment_store.stack import Stack

    rows = Stack(Settings()).status()
    if as_json:
        out.print_json(data=[r.__dict__ for r in rows])
    else:
        t = Table(title="assessment-store stack")
        for col in ("service", "state", "pid", "address", "rss", "data", "log"):
            t.add_column(col)
        for r in rows:
            rss = f"{r.rss_bytes / 2**20:.0f} MiB" if r.rss_bytes else "-"
            state = "[green]running[/]" if r.running else "[red]stopped[/]"
            t.add_row(r.name, state, str(r.pid or "-"), r.address, rss, r.data, r.log)
        out.print(t)
    if not all(r.running for r in rows):
        raise typer.Exit(1)


@stack_app.command("logs")
def stack_logs(
    service: Annotated[str, typer.Argument(help="kafka, postgres, processor, projector, bridge or reverse-sync.")],
    lines: Annotated[int, typer.Option("-n", "--lines", help="How many lines.")] = 50,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new lines.")] = False,
) -> None:
    """Print the tail of a service's log."""
    from assessment_store.stack import Stack
    from assessment_store.stack import tail

    try:
        path = Path(Stack(Settings()).log_path(service))
    except ValueError as e:
        _fail(str(e))
    sys.stdout.write(tail(path, lines) + "\n")
    if follow:
        with path.open("rb") as f:
            f.seek(0, 2)
            try:
                while True:
                    chunk = f.read()
                    if chunk:
                        sys.stdout.write(chunk.decode(errors="replace"))
                        sys.stdout.flush()
                    else:
                        time.sleep(0.3)
            except KeyboardInterrupt:
                pass


# --- services ---------------------------------------------------------------------------


PidFile = Annotated[Path | None, typer.Option(help="Write the pid here; '<pid-file>.ready' once consuming.")]


@app.command("processor")
def processor(pid_file: PidFile = None) -> None:
    """Run the command processor (the single writer of the events topic) in the foreground until SIGTERM."""
    from assessment_store.streams import CommandProcessor

    _serve_forever(pid_file, "processor", CommandProcessor)


@app.command("projector")
def projector(pid_file: PidFile = None) -> None:
    """Run the projector (fold the events and outcomes topics into PostgreSQL) in the foreground until SIGTERM."""
    from assessment_store.projections import Projector

    _serve_forever(pid_file, "projector", Projector)


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
    _show(_with_store(lambda s: s.start_assessment(assessment_id, expected_version=expected_version)), as_json)


@app.command("progress")
def progress(
    assessment_id: IdArg,
    percent: Annotated[int, typer.Argument(help="0-100.")],
    message: Annotated[str | None, typer.Option("--message", "-m")] = None,
    expected_version: ExpectedVersion = None,
    as_json: JsonFlag = False,
) -> None:
    """Record progress (0-100) of a PENDING or PROCESSING assessment."""
    _show(
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
    _show(
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
    _show(
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
    _show(_with_store(lambda s: s.cancel_assessment(assessment_id, reason, expected_version=expected_version)), as_json)


@app.command("retry")
def retry(assessment_id: IdArg, expected_version: ExpectedVersion = None, as_json: JsonFlag = False) -> None:
    """FAILED -> PENDING, retry count + 1."""
    _show(_with_store(lambda s: s.retry_assessment(assessment_id, expected_version=expected_version)), as_json)


@app.command("get")
def get(assessment_id: IdArg, as_json: JsonFlag = False) -> None:
    """Print an assessment's current state from the projection."""
    _show(_with_store(lambda s: s.get_state(assessment_id)), as_json)


@app.command("wait")
def wait(
    assessment_id: IdArg,
    timeout: Annotated[float, typer.Option(help="Seconds; exit code 3 when it passes.")] = 30.0,
    as_json: JsonFlag = False,
) -> None:
    """Wait until the assessment is COMPLETED, FAILED or CANCELLED, then print it."""
    if not math.isfinite(timeout) or timeout <= 0:
        _fail(f"--timeout must be a positive, finite number of seconds, got {timeout}")
    _show(_with_store(lambda s: s.wait_for_completion(assessment_id, timeout)), as_json)


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


@app.command("replay")
def replay_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Rebuild and verify, but do not swap.")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Discard an interrupted rebuild and start from 0.")] = False,
    keep_old: Annotated[bool, typer.Option("--keep-old", help="Keep the replaced schema as projection_old_<time>.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Swap even if verification finds differences.")] = False,
) -> None:
    """Rebuild the projection from offset 0 into fresh tables while the live one serves, verify it
    (row counts, versions, checksum) and swap it in atomically. Interrupted, it resumes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from assessment_store.projections import replay

    with Progress(
        TextColumn("[bold]replay[/]"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} events/s"), TimeRemainingColumn(), console=err,
    ) as bar:
        task = bar.add_task("replay", total=None, rate="-")
        t0 = time.monotonic()
        seen = 0

        def on_total(total: int, done: int) -> None:
            bar.update(task, total=total, completed=done)

        def on_batch(n: int) -> None:
            nonlocal seen
            seen += n
            bar.update(task, advance=n, rate=f"{seen / max(time.monotonic() - t0, 1e-6):,.0f}")

        report = _run(replay(Settings(), dry_run=dry_run, restart=restart, keep_old=keep_old, force=force,
                             on_total=on_total, on_batch=on_batch))
    v = report.verification
    out.print(f"folded {report.events_folded:,} records in {report.seconds:.1f} s"
              f"{' (resumed)' if report.resumed else ''}; verification "
              f"{'[green]passed[/]' if v.ok else '[red]FAILED[/]'}: assessments {v.live_assessments}/{v.rebuilt_assessments},"
              f" events {v.live_events}/{v.rebuilt_events}, version mismatches {v.version_mismatches},"
              f" checksum {v.live_checksum} / {v.rebuilt_checksum}")
    if report.quarantined:
        out.print(f"[yellow]{report.quarantined} assessment(s) quarantined[/] in the rebuild: PostgreSQL refused a value"
                  " of their events (`assessment-store quarantine list` once swapped in)")
    out.print("swapped in" if report.swapped else "dry run: not swapped (the rebuild stays in schema projection_rebuild)")


# --- quarantine (self-contained: the group, its two commands) -----------------------------

quarantine_app = typer.Typer(
    help="Assessments the projector quarantined because PostgreSQL refused a value of one of their events.",
    no_args_is_help=True,
)
app.add_typer(quarantine_app, name="quarantine")


@quarantine_app.command("list")
def quarantine_list(as_json: JsonFlag = False) -> None:
    """Quarantined assessments: why, where the first refused event sits, how many events are held."""
    from assessment_store.projections import list_quarantine

    entries = _run(list_quarantine(Settings()))
    if as_json:
        out.print_json(json.dumps([e.__dict__ for e in entries], default=str))
        return
    t = Table(title=f"{len(entries)} quarantined assessment(s)")
    for col in ("assessment", "since", "first refused event", "held", "reason", "re-folds"):
        t.add_column(col)
    for e in entries:
        t.add_row(e.assessment_id, f"{e.quarantined_at:%Y-%m-%d %H:%M:%S}", f"{e.topic}/{e.partition}/{e.offset}",
                  str(e.held), f"{e.sqlstate or ''} {e.reason}".strip(),
                  f"{e.refold_attempts}" + (f" (last: {e.last_refold_error})" if e.last_refold_error else ""))
    out.print(t)


@quarantine_app.command("refold")
def quarantine_refold(assessment_id: IdArg) -> None:
    """Re-apply a quarantined assessment's held events in log order, after a fix. Exit 1 if refused again."""
    from assessment_store.projections import refold

    result = _run(refold(Settings(), assessment_id))
    if not result.refolded:
        _fail(f"still refused, {assessment_id!r} stays quarantined: {result.error}", 1)
    out.print(f"re-folded {result.events} event(s) of {assessment_id!r}: now at version {result.version}")


@app.command("at")
def at_cmd(
    assessment_id: Annotated[str | None, typer.Argument(help="One assessment; omit for counts per state.")] = None,
    at_time: Annotated[str | None, typer.Option("--time", help="ISO-8601 time, e.g. 2026-11-24T09:00:00Z.")] = None,
    offset: Annotated[int | None, typer.Option("--offset", help="Offset in the assessment's partition (inclusive).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Time travel: an assessment, or the counts per state, as of a time or offset, from the log."""
    from datetime import datetime

    from assessment_store.projections import counts_at, state_at

    when = None
    if at_time is not None:
        try:
            when = datetime.fromisoformat(at_time.replace("Z", "+00:00"))
        except ValueError:
            _fail(f"--time {at_time!r} is not an ISO-8601 time")
        if when is not None and when.tzinfo is None:
            _fail("--time needs a time zone (e.g. a trailing Z for UTC)")
    if assessment_id is None:
        if when is None:
            _fail("counts per state need --time")
        assert when is not None
        counts = _run(counts_at(Settings(), when))
        if as_json:
            out.print_json(data={k.value: v for k, v in counts.items()})
        else:
            out.print(", ".join(f"{k.value}={v}" for k, v in counts.items()))
        return
    state = _run(state_at(Settings(), assessment_id, at=when, offset=offset))
    if state is None:
        _fail(f"assessment {assessment_id!r} did not exist at that point", 1)
    assert state is not None
    _show(state, as_json)


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Default: ASSESSMENT_STORE_API_HOST (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Default: ASSESSMENT_STORE_API_PORT (8080).")] = None,
) -> None:
    """Serve the HTTP API (OpenAPI at /docs and /openapi.json). Writes need ASSESSMENT_STORE_API_TOKEN; reads
    need it or ASSESSMENT_STORE_API_READ_TOKEN."""
    import uvicorn

    from assessment_store.api import create_app

    settings = Settings()
    if settings.api_token is None:
        err.print("[yellow]ASSESSMENT_STORE_API_TOKEN is not set: write endpoints will answer 403.[/]")
        if settings.api_read_token is None:
            err.print("[yellow]ASSESSMENT_STORE_API_READ_TOKEN is not set either: data reads will answer 403 "
                      "(/healthz stays open).[/]")
    uvicorn.run(create_app(settings), host=host or settings.api_host, port=port or settings.api_port,
                log_level="info", proxy_headers=False)


@app.command("demo")
def demo(
    count: Annotated[int, typer.Option(min=1, max=1000, help="How many assessments.")] = 6,
    migration: Annotated[bool, typer.Option(
        help="Then the migration: the Node legacy service and the store in dual mode at 30 %, with shadows.")] = True,
    migration_count: Annotated[int, typer.Option(min=1, max=1000, help="Assessments through the router.")] = 20,
) -> None:
    """Drive a few assessments through their lifecycle, then a dual-mode migration run; print both results."""
    from ._demo import run_demo

    settings = Settings()
    _run(run_demo(settings, count, out))
    if migration:
        from assessment_store.bridge._demo import run_migration_demo

        if not _run(run_migration_demo(settings, migration_count, out)):
            err.print("[red]the migration demo's checks did not all hold (see above)[/]")
            raise typer.Exit(1)


_mount_bridge()

migrate_app = typer.Typer(help="Validate the migration off legacy (docs/migration.md).", no_args_is_help=True)
app.add_typer(migrate_app, name="migrate")


@migrate_app.command("validate")
def migrate_validate(
    legacy_url: Annotated[str, typer.Option("--legacy-url", help="The legacy service's HTTP face (bin/legacy-http.js).")],
    as_json: JsonFlag = False,
    buckets: Annotated[int, typer.Option("--buckets", help="Buckets of ids compared by checksum.")] = 4096,
    max_findings: Annotated[int, typer.Option("--max-findings", help="Findings shown per kind (all are counted).")] = 20,
    id_prefix: Annotated[str, typer.Option("--id-prefix", help="Only the ids starting with this.")] = "",
    deep: Annotated[bool, typer.Option("--deep", help="Check every history and fold, not a sample.")] = False,
) -> None:
    """Legacy vs store: lost, extra, corrupted, duplicates, illegal histories, projection vs fold. Exit 0 pass, 1 findings."""
    from assessment_store.migration import exit_code, render, report_json, validate_after

    report = _run(validate_after(Settings(), legacy_url, buckets=buckets, max_findings=max_findings,
                                 id_prefix=id_prefix, deep=deep))
    if as_json:
        sys.stdout.write(report_json(report) + "\n")
    else:
        render(report, out)
    raise typer.Exit(exit_code(report))


def main() -> None:
    app()
