"""Connections to PostgreSQL, the one place asyncpg errors become store errors, and the
versioned schema upgrade."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from importlib import resources
from typing import Any

import asyncpg

from assessment_store.core import DatabaseUnavailable, DataRejected, Settings

__all__ = [
    "LIVE_SCHEMA", "SCHEMA_VERSION", "check_schema_name", "connect", "create_pool", "create_projection_schema",
    "is_data_rejection", "migrate", "translate_db_errors",
]

_MIGRATION_RE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_SCOPE_RE = re.compile(r"^-- scope: (projection|public)\s*$", re.MULTILINE)
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
LIVE_SCHEMA = "projection"
_MIGRATION_LOCK = 0x617373_6D6967  # pg_advisory_xact_lock key: "assmig"


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in (resources.files("assessment_store.projections") / "sql").iterdir():
        m = _MIGRATION_RE.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text()))
    return sorted(found)


def _scope(sql: str, name: str) -> str:
    m = _SCOPE_RE.search(sql)
    if m is None:
        raise ValueError(f"migration {name} lacks a '-- scope: projection|public' line")
    return m.group(1)


def check_schema_name(schema: str) -> str:
    if not _SCHEMA_RE.match(schema):
        raise ValueError(f"invalid projection schema name {schema!r}")
    return schema


SCHEMA_VERSION = max(v for v, _, _ in _migrations())


_RETRIABLE_SQLSTATE_CLASSES = ("08", "40", "53", "57")
"""Connection exceptions, transaction rollbacks (serialization, deadlock), insufficient resources
and operator intervention (shutdown, crash recovery, "cannot connect now"): retrying can succeed."""


def is_data_rejection(sqlstate: str | None) -> bool:
    """SQLSTATEs that refuse a value itself, so the same statement fails however often it is
    retried: class 22 (data exception: NUL in text 22021, an unsupported \\u0000 in jsonb 22P05, a
    number out of range 22003, ...), class 54 (program limit: a document nested too deep) and the
    two constraint checks a value can fail (23514 CHECK, 23502 NOT NULL)."""
    return sqlstate is not None and (sqlstate[:2] in ("22", "54") or sqlstate in ("23514", "23502"))


@contextlib.contextmanager
def translate_db_errors(what: str) -> Iterator[None]:
    """asyncpg and socket failures -> ``DatabaseUnavailable`` naming what was being done; a value
    PostgreSQL (or asyncpg's encoder) refuses -> ``DataRejected``, which no retry can fix. Every
    asyncpg exception becomes a store error here, the client-side ones too."""
    try:
        yield
    except asyncpg.exceptions._base.DataError as e:
        # Client side, before anything reached the server: a value asyncpg cannot encode for its
        # column type (an int out of int64 range, ...). Caught before InterfaceError, its base.
        raise DataRejected(what, None, str(e)) from e
    except (OSError, asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.ConnectionDoesNotExistError,
            asyncpg.exceptions.InterfaceError, asyncpg.exceptions.InternalClientError) as e:
        # InternalClientError ("another operation is in progress") is what a pooled connection
        # says when PostgreSQL vanished in the middle of a statement: an outage, not a bug.
        raise DatabaseUnavailable(f"{what}: PostgreSQL unreachable ({type(e).__name__}: {e})") from e
    except asyncpg.exceptions.InvalidPasswordError as e:
        raise DatabaseUnavailable(f"{what}: authentication failed ({e})") from e
    except asyncpg.PostgresError as e:
        if is_data_rejection(e.sqlstate):
            raise DataRejected(what, e.sqlstate, str(e)) from e
        err = DatabaseUnavailable(f"{what}: {type(e).__name__}: {e}")
        err.retriable = str(getattr(e, "sqlstate", "") or "").startswith(_RETRIABLE_SQLSTATE_CLASSES)
        raise err from e


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb columns round-trip as Python values (a JSON string stays a string).
    await conn.set_type_codec("jsonb", encoder=_jsonb_encode, decoder=json.loads, schema="pg_catalog")


def _jsonb_encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Pool reset hook. asyncpg's default runs RESET ALL / UNLISTEN * / CLOSE ALL on every
    release - a second round trip per query. Pooled connections here never LISTEN, never change
    session settings after connect and never leave cursors open (asyncpg still rolls back an
    open transaction before calling this), so there is nothing to reset."""


def _connect_kwargs(settings: Settings) -> dict[str, Any]:
    passfile = settings.postgres_passfile
    kwargs: dict[str, Any] = {"dsn": settings.dsn}
    if passfile.exists():
        kwargs["passfile"] = str(passfile)
    return kwargs


async def connect(settings: Settings, *, timeout_s: float = 10.0) -> asyncpg.Connection:
    with translate_db_errors(f"connecting to {settings.postgres_host}:{settings.postgres_port}"):
        conn = await asyncpg.connect(**_connect_kwargs(settings), timeout=timeout_s)
        await _init_connection(conn)
        return conn


async def create_pool(
    settings: Settings, *, min_size: int = 1, max_size: int = 10, synchronous_commit: bool = True,
    setup: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> asyncpg.Pool:
    """``setup``: run on each new connection after the codecs are set (session-local state, such
    as the projector's staging tables)."""
    server_settings = {} if synchronous_commit else {"synchronous_commit": "off"}

    async def init(conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        if setup is not None:
            await setup(conn)

    with translate_db_errors(f"opening a pool to {settings.postgres_host}:{settings.postgres_port}"):
        pool = await asyncpg.create_pool(
            **_connect_kwargs(settings), min_size=min_size, max_size=max_size, init=init,
            server_settings=server_settings, reset=_keep_session,
        )
        assert pool is not None
        return pool


@contextlib.asynccontextmanager
async def connection(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(settings)
    try:
        yield conn
    finally:
        await conn.close()


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the SQL files not yet applied, in order; returns their names.

    Each file runs in its own transaction together with its row in ``schema_migrations``, under
    an advisory lock, so concurrent starters (two projectors) apply each file exactly once.
    Only additive files ship here; anything destructive needs an explicit flag of its own.
    """
    applied: list[str] = []
    with translate_db_errors("upgrading the projection schema"):
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS public.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, name, sql in _migrations():
            _scope(sql, name)  # every file declares whether a rebuild copies it
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                done = await conn.fetchval("SELECT 1 FROM public.schema_migrations WHERE version = $1", version)
                if done:
                    continue
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO public.schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
                applied.append(name)
    return applied


async def create_projection_schema(conn: asyncpg.Connection, schema: str) -> None:
    """Create ``schema`` as a sibling of the live projection: every ``scope: projection``
    migration, with the schema name substituted. Used by a rebuild; the caller owns the
    transaction."""
    check_schema_name(schema)
    for _version, name, sql in _migrations():
        if _scope(sql, name) != "projection":
            continue
        await conn.execute(sql.replace(f"{LIVE_SCHEMA}.", f"{schema}.").replace(
            f"CREATE SCHEMA IF NOT EXISTS {LIVE_SCHEMA};", f"CREATE SCHEMA {schema};"))
