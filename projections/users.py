"""The users read model: who exists, their role, whether they are disabled, their current credential id,
and their token generation (how many times their password changed: older access tokens are refused)."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import dict_row

from projections.events import EventRecord
from projections.projector import Handler, Projector


class UsersProjector(Projector):
    name = "users"
    tables = ("users",)

    def handlers(self) -> dict[str, Handler]:
        return {
            "User.Registered": self.on_registered,
            "User.RoleChanged": self.on_role_changed,
            "User.PasswordChanged": self.on_password_changed,
            "User.Disabled": self.on_disabled,
            "User.Enabled": self.on_enabled,
        }

    async def on_registered(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        e = record.event
        await cur.execute(
            "INSERT INTO users (user_id, username, role, credential_id, version, created_at, updated_at)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s)",
            (record.aggregate_id, e.username, e.role, e.credential_id, record.version, e.timestamp, e.timestamp),
        )

    async def on_role_changed(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        await self._update(cur, record, "role = %s", record.event.role)

    async def on_password_changed(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        # Applied once per event (the runner applies only an aggregate's next version), so counting is safe.
        assignment = "credential_id = %s, token_generation = token_generation + 1"
        await self._update(cur, record, assignment, record.event.credential_id)

    async def on_disabled(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        # A new generation: the tokens issued before stay refused when the user is enabled again (an
        # account disabled because its tokens leaked must not get them back with it).
        await self._update(cur, record, "disabled = %s, token_generation = token_generation + 1", True)

    async def on_enabled(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        await self._update(cur, record, "disabled = %s", False)

    async def _update(self, cur: AsyncCursor[Any], record: EventRecord, assignment: str, value: Any) -> None:
        await cur.execute(
            f"UPDATE users SET {assignment}, version = %s, updated_at = %s WHERE user_id = %s",
            (value, record.version, record.event.timestamp, record.aggregate_id),
        )


_COLUMNS = (
    "user_id::text AS user_id, username, role, credential_id, disabled, token_generation, version,"
    " created_at, updated_at"
)


async def get_user(conn: AsyncConnection[Any], user_id: str) -> dict[str, Any] | None:
    """One user row by id, or None."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM users WHERE user_id = %s", (user_id,))
        return await cur.fetchone()


async def get_user_by_name(conn: AsyncConnection[Any], username: str) -> dict[str, Any] | None:
    """One user row by username (case-insensitive), or None."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM users WHERE lower(username) = lower(%s)", (username,))
        return await cur.fetchone()


async def list_users(conn: AsyncConnection[Any], limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """Users ordered by name."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM users ORDER BY lower(username) LIMIT %s OFFSET %s", (limit, offset))
        return await cur.fetchall()


async def admin_exists(conn: AsyncConnection[Any]) -> bool:
    """Is there at least one enabled admin?"""
    cur = await conn.execute("SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin' AND NOT disabled)")
    row = await cur.fetchone()
    return bool(row and row[0])


MAX_LISTED_ADMINS = 1000


async def enabled_admins(conn: AsyncConnection[Any]) -> list[str]:
    """The ids of the enabled admins (at most MAX_LISTED_ADMINS): what opens the admin roster."""
    cur = await conn.execute(
        "SELECT user_id::text FROM users WHERE role = 'admin' AND NOT disabled ORDER BY user_id LIMIT %s",
        (MAX_LISTED_ADMINS,),
    )
    return [row[0] for row in await cur.fetchall()]
