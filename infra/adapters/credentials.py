"""Password hashes (argon2id), kept apart from the event log and the read models.

They live in the schema ``<live schema>_auth`` so that a read-model rebuild (which replaces the
live schema) never drops them, and no event, audit row, snapshot or response ever holds one.
Rows are keyed by a random credential id that the User events refer to (see ``domain/user.py``).
Hashing costs tens of milliseconds of CPU, so it runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from psycopg_pool import AsyncConnectionPool

from infra.adapters.postgres import CONNECT_TIMEOUT_S, check_schema
from infra.runtime.settings import AuthenticationSettings

_LOCK = 7_294_114  # advisory lock id: one process creates the schema at a time
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


def auth_schema(schema: str) -> str:
    """Where the credentials of the deployment whose live schema is ``schema`` are kept."""
    return check_schema(f"{schema}_auth")


async def ensure_credentials_table(url: str, schema: str) -> None:
    """Create the credentials schema and table if they are missing."""
    target = auth_schema(schema)
    connecting = psycopg.AsyncConnection.connect(url, connect_timeout=CONNECT_TIMEOUT_S)
    async with await connecting as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{target}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{target}".credentials (credential_id uuid PRIMARY KEY,'
            " user_id uuid NOT NULL, hash text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
        )


def password_hasher(settings: AuthenticationSettings) -> PasswordHasher:
    """argon2id at the cost the settings give (authentication.password_hash_*)."""
    return PasswordHasher(
        time_cost=settings.password_hash_time_cost,
        memory_cost=settings.password_hash_memory_kib,
        parallelism=settings.password_hash_parallelism,
    )


class CredentialStore:
    """Create and verify credentials; the pool may use any search_path (names are qualified)."""

    def __init__(self, pool: AsyncConnectionPool[Any], schema: str, hasher: PasswordHasher | None = None) -> None:
        self.pool = pool
        self.table = f'"{auth_schema(schema)}".credentials'
        self._hasher = hasher or PasswordHasher()
        self._dummy: str | None = None

    async def create(self, user_id: str, password: str) -> str:
        """Hash ``password`` and store it for ``user_id``; return the new credential id."""
        digest = await asyncio.to_thread(self._hasher.hash, password)
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
        return await asyncio.to_thread(self._check, digest, password)

    def _check(self, digest: str | None, password: str) -> bool:
        if self._dummy is None:
            # Verified when the user does not exist, so a wrong username costs as long as a wrong
            # password. Made on first use, not at start: it costs a hash of CPU, and most processes
            # that build a store never verify a password.
            self._dummy = self._hasher.hash(uuid.uuid4().hex)
        try:
            return self._hasher.verify(digest or self._dummy, password) and digest is not None
        except (VerificationError, InvalidHashError):
            return False
