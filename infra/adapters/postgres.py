"""PostgreSQL: the connection pool (one schema per deployment or test) and versioned migrations."""

from __future__ import annotations

import re
from importlib import resources

import psycopg
from psycopg_pool import AsyncConnectionPool

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MIGRATION_LOCK = 7_294_113  # advisory lock id: one migrator at a time across processes


def check_schema(schema: str) -> str:
    """Schema names go into SQL text, so only plain identifiers are accepted."""
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return schema


# psycopg prepares a statement after this many executions; this many never comes, so only the statements
# whose execute() asks (prepare=True) are prepared: the reads by id that every client repeats.
PREPARE_WHEN_ASKED = 2**62


def connection_kwargs(schema: str, prepare: bool = False) -> dict[str, object]:
    """Connection options that put every statement in ``schema``; ``prepare``: allow prepared statements
    where a statement asks for one (else none at all)."""
    # PostgreSQL re-plans a prepared statement when its search_path's schema or a table it read is replaced
    # (a rebuild's swap renames schemas, or moves tables), so a prepared read follows the swap. Writers
    # (the projection runner) prepare nothing all the same.
    threshold = PREPARE_WHEN_ASKED if prepare else None
    return {"options": f"-c search_path={check_schema(schema)}", "autocommit": False, "prepare_threshold": threshold}


async def open_pool(
    url: str, schema: str, min_size: int = 2, max_size: int = 10, prepare: bool = False
) -> AsyncConnectionPool:
    """An opened async pool whose connections use ``schema`` (``prepare``: see connection_kwargs)."""
    kwargs = connection_kwargs(schema, prepare)
    pool = AsyncConnectionPool(url, min_size=min_size, max_size=max_size, kwargs=kwargs, open=False)
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
