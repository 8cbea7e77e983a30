"""``assessment-store stack …``: the local stack (Kafka, PostgreSQL and the store's processes), without Docker."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from assessment_store.core import AssessmentStoreError, ServiceFailed, Settings

from ._console import EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_USAGE, err, out
from ._console import fail as _fail
from ._options import JsonFlag

stack_app = typer.Typer(help="The local stack: Kafka, PostgreSQL and the projector, without Docker.", no_args_is_help=True)

ServicesArg = Annotated[
    list[str] | None,
    typer.Argument(help="kafka, postgres, schema-registry, processor, projector, bridge, reverse-sync, lag-monitor, "
                   "alertmanager and/or prometheus (default: kafka, postgres and the store's processes; reverse-sync "
                   "only with ASSESSMENT_STORE_REVERSE_SYNC=true; the others when named, or when running).",
                   show_default=False),
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
              f"`assessment-store stack status` shows what runs", EXIT_UNAVAILABLE)
    except PermissionError as e:
        _fail(f"{e}\nnext: make {settings.data_dir.resolve()} writable by this account, or choose another data "
              "directory with ASSESSMENT_STORE_DATA_DIR", EXIT_UNAVAILABLE)
    except (AssessmentStoreError, ValueError, OSError) as e:
        _fail(str(e), EXIT_UNAVAILABLE)
    err.print(f"stack up in {time.monotonic() - t0:.1f} s")
    if services and "schema-registry" in services and settings.schema_registry_url is None:
        from assessment_store.stack import SchemaRegistryService

        err.print("writers use the schema registry (Confluent wire format) once this is set: "
                  f"export ASSESSMENT_STORE_SCHEMA_REGISTRY_URL={SchemaRegistryService(settings).url}")
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
        _fail(str(e), EXIT_UNAVAILABLE)


@stack_app.command("purge")
def stack_purge(
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: delete all Kafka and PostgreSQL data.")] = False,
) -> None:
    """Stop the stack and delete its data directory. Needs --yes."""
    from assessment_store.stack import Stack

    settings = Settings()
    if not yes:
        _fail(f"this deletes every event and projection under {settings.data_dir.resolve()}; add --yes to confirm", EXIT_USAGE)
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
        _fail(f"no authenticated Kafka under {s.data_dir.resolve()}: `stack up --secure` makes one", EXIT_REFUSED)
    if principal is None:
        out.print(f"credentials (principal:password, mode 0600): {s.kafka_credentials_file}")
        out.print(f"CA certificate: {s.kafka_ca_file}")
        out.print(f"bootstrap: {s.kafka_bootstrap} (SASL_SSL, SCRAM-SHA-512)")
        out.print(f"principals: {', '.join(PRINCIPALS)}")
        return
    password = read_credentials(s.kafka_credentials_file).get(principal)
    if principal not in PRINCIPALS or password is None:
        _fail(f"unknown principal {principal!r}; known: {', '.join(PRINCIPALS)}", EXIT_USAGE)
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
        for col in ("service", "state", "pid", "address", "metrics", "rss", "data", "log"):
            t.add_column(col)
        for r in rows:
            rss = f"{r.rss_bytes / 2**20:.0f} MiB" if r.rss_bytes else "-"
            state = "[green]running[/]" if r.running else "[red]stopped[/]"
            t.add_row(r.name, state, str(r.pid or "-"), r.address, r.metrics or "-", rss, r.data, r.log)
        out.print(t)
    if not all(r.running for r in rows):
        raise typer.Exit(EXIT_REFUSED)


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
        _fail(str(e), EXIT_USAGE)
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

