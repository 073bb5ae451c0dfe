"""PostgreSQL: the connection pool (one schema per deployment or test) and versioned migrations."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MIGRATION_LOCK = 7_294_113  # advisory lock id: one migrator at a time across processes


def check_schema(schema: str) -> str:
    """Schema names go into SQL text, so only plain identifiers are accepted."""
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return schema


# Beyond its statement timeout, how long a BoundedPool connection may still be held (PostgreSQL's own
# cancellation of a slow statement must win: it answers 503 query_timeout on a server that answers).
HOLD_MARGIN_S = 5.0

# psycopg prepares a statement after this many executions; this many never comes, so only the statements
# whose execute() asks (prepare=True) are prepared: the reads by id that every client repeats.
PREPARE_WHEN_ASKED = 2**62


# How long opening a connection may take (libpq's connect_timeout, whole seconds, 2 at least). Without it a
# PostgreSQL that does not answer (a host that drops packets, a server that accepts and says nothing) keeps
# psycopg waiting for ever: an operator's `pipeline dlq` or `pipeline user` then hung instead of saying
# "cannot reach the system". A local or LAN PostgreSQL connects in milliseconds, so 5 s is only ever
# reached when it is not there; a pool retries a connection that timed out like one that was refused.
CONNECT_TIMEOUT_S = 5


def connection_kwargs(schema: str, prepare: bool = False, statement_timeout_ms: int = 0) -> dict[str, object]:
    """Connection options that put every statement in ``schema``; ``prepare``: allow prepared statements
    where a statement asks for one (else none at all); ``statement_timeout_ms``: cancel a statement
    that runs longer (0: never). A connection that takes longer than CONNECT_TIMEOUT_S to open fails
    (psycopg.OperationalError)."""
    # PostgreSQL re-plans a prepared statement when its search_path's schema or a table it read is replaced
    # (a rebuild's swap renames schemas, or moves tables), so a prepared read follows the swap. Writers
    # (the projection runner) prepare nothing all the same.
    threshold = PREPARE_WHEN_ASKED if prepare else None
    options = f"-c search_path={check_schema(schema)}"
    if statement_timeout_ms:
        options += f" -c statement_timeout={int(statement_timeout_ms)}"
    return {
        "options": options,
        "autocommit": False,
        "prepare_threshold": threshold,
        "connect_timeout": CONNECT_TIMEOUT_S,
    }


class BoundedPool(AsyncConnectionPool):
    """A pool whose ``connection()`` may be held at most ``hold_seconds``; then the work in it is
    cancelled and psycopg.OperationalError raised (answered 503 like PostgreSQL being down).

    statement_timeout is PostgreSQL's own: a server that does not answer at all (stopped, hung, a
    network that drops packets) never sends it, and the request would wait on its socket forever.
    psycopg cancels the query when the waiting task is cancelled, and the pool discards a connection
    returned mid-query.
    """

    def __init__(self, *args: Any, hold_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold_seconds = hold_seconds

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with answered_within(self.hold_seconds), super().connection(timeout) as conn:
            yield conn


@asynccontextmanager
async def answered_within(seconds: float | None) -> AsyncIterator[None]:
    """The block's work with a connection, cancelled after ``seconds`` (None: unbounded) and then
    psycopg.OperationalError raised, as for PostgreSQL being down (BoundedPool, the read connections)."""
    if seconds is None:
        yield
        return
    bound = asyncio.timeout(seconds)
    try:
        async with bound:
            yield
    except TimeoutError as exc:
        if not bound.expired():
            raise
        raise psycopg.OperationalError(f"PostgreSQL did not answer within {seconds:g} s") from exc


async def open_pool(
    url: str,
    schema: str,
    min_size: int = 2,
    max_size: int = 10,
    prepare: bool = False,
    statement_timeout_ms: int = 0,
    timeout: float = 30.0,
) -> AsyncConnectionPool:
    """An opened async pool whose connections use ``schema`` (``prepare``, ``statement_timeout_ms``: see
    connection_kwargs); ``timeout``: how long ``connection()`` waits for one before PoolTimeout. With a
    statement timeout, a connection is held at most that long plus HOLD_MARGIN_S (BoundedPool)."""
    kwargs = connection_kwargs(schema, prepare, statement_timeout_ms)
    options: dict[str, Any] = {"min_size": min_size, "max_size": max_size, "kwargs": kwargs, "timeout": timeout}
    if statement_timeout_ms:
        hold = statement_timeout_ms / 1000 + HOLD_MARGIN_S
        pool: AsyncConnectionPool = BoundedPool(url, open=False, hold_seconds=hold, **options)
    else:
        pool = AsyncConnectionPool(url, open=False, **options)
    await pool.open(wait=True, timeout=30)
    return pool


def migration_scripts() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped in ``projections/migrations``, in order."""
    scripts = []
    for entry in resources.files("projections.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            scripts.append((version, entry.name, entry.read_text()))
    return sorted(scripts)


async def migrate(url: str, schema: str) -> list[str]:
    """Create ``schema`` if needed and apply the migrations it lacks; return the names applied."""
    check_schema(schema)
    applied: list[str] = []
    async with await psycopg.AsyncConnection.connect(url, **connection_kwargs(schema)) as conn:  # type: ignore[arg-type]
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            for version, name, sql in migration_scripts():
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                applied.append(name)
    return applied
