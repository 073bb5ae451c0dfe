"""Password hashes (argon2id), kept apart from the event log and the read models.

They live in the schema ``<live schema>_auth`` so that a read-model rebuild (which replaces the
live schema) never drops them, and no event, audit row, snapshot or response ever holds one.
Rows are keyed by a random credential id that the User events refer to (see ``domain/user.py``).
Hashing costs tens of milliseconds of CPU, so it runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from typing import Any

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from psycopg_pool import AsyncConnectionPool

from infra.adapters.postgres import check_schema

_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters
_LOCK = 7_294_114  # advisory lock id: one process creates the schema at a time
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


def auth_schema(schema: str) -> str:
    """Where the credentials of the deployment whose live schema is ``schema`` are kept."""
    return check_schema(f"{schema}_auth")


async def ensure_credentials_table(url: str, schema: str) -> None:
    """Create the credentials schema and table if they are missing."""
    target = auth_schema(schema)
    async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{target}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{target}".credentials (credential_id uuid PRIMARY KEY,'
            " user_id uuid NOT NULL, hash text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
        )


class CredentialStore:
    """Create and verify credentials; the pool may use any search_path (names are qualified)."""

    def __init__(self, pool: AsyncConnectionPool[Any], schema: str) -> None:
        self.pool = pool
        self.table = f'"{auth_schema(schema)}".credentials'

    async def create(self, user_id: str, password: str) -> str:
        """Hash ``password`` and store it for ``user_id``; return the new credential id."""
        digest = await asyncio.to_thread(_HASHER.hash, password)
        credential_id = str(uuid.uuid4())
        async with self.pool.connection() as conn:
            await conn.execute(
                f"INSERT INTO {self.table} (credential_id, user_id, hash) VALUES (%s, %s, %s)",
                (credential_id, user_id, digest),
            )
        return credential_id

    async def verify(self, user_id: str | None, credential_id: str | None, password: str) -> bool:
        """Does ``password`` match this user's credential? Takes as long when there is no such user."""
        digest = None
        if user_id and credential_id:
            async with self.pool.connection() as conn:
                cur = await conn.execute(
                    f"SELECT hash FROM {self.table} WHERE credential_id = %s AND user_id = %s",
                    (credential_id, user_id),
                )
                row = await cur.fetchone()
                digest = row[0] if row else None
        return await asyncio.to_thread(_check, digest, password)


@functools.cache
def _dummy_hash() -> str:
    """Verified when the user does not exist, so a wrong username costs as long as a wrong password.

    Made on first use, not at import: every worker imports this module and none verifies a password,
    and an argon2 hash costs each process start tens of milliseconds of CPU (over a second when the
    machine is busy)."""
    return _HASHER.hash(uuid.uuid4().hex)


def _check(digest: str | None, password: str) -> bool:
    try:
        return _HASHER.verify(digest or _dummy_hash(), password) and digest is not None
    except (VerificationError, InvalidHashError):
        return False
