"""Callers' role, disabled flag and token generation, cached per API process and invalidated by the change feed.

Every authenticated request needs the caller's current role and whether they are disabled. The
answer comes from the users read model; this cache holds it until the projection announces a
change to that user (the same NOTIFY that makes the change visible in the table), so a disable or
demotion still applies from the next request after it is projected, as with a direct lookup.
Anything that could hide a change — a truncated announcement, a feed reconnect — empties the cache.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any, NamedTuple

from psycopg_pool import AsyncConnectionPool

from commands.tasks import cancel_and_wait
from projections.changes import ChangeFeed


class UserRow(NamedTuple):
    username: str
    role: str
    disabled: bool
    token_generation: int  # access tokens of an older generation are refused (password changed since)


class UserCache:
    def __init__(self, feed: ChangeFeed, pool: AsyncConnectionPool, size: int = 10_000) -> None:
        self.feed = feed
        self.pool = pool
        self.size = size
        self._rows: OrderedDict[str, UserRow | None] = OrderedDict()
        self._generation = -1
        self._invalidations = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._invalidate_forever())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def get(self, user_id: str) -> UserRow | None:
        """The user's row, or None if unknown. Raises psycopg errors."""
        if not self.feed.connected or self.feed.generation != self._generation:
            self._rows.clear()  # announcements may have been missed meanwhile
            self._generation = self.feed.generation
        if user_id in self._rows:
            self._rows.move_to_end(user_id)
            return self._rows[user_id]
        # A change announced while this lookup runs may postdate what it read: then don't keep it.
        invalidations = self._invalidations
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT username, role, disabled, token_generation FROM users WHERE user_id = %s", (user_id,)
            )
            row = await cur.fetchone()
        value = UserRow(row[0], row[1], bool(row[2]), int(row[3])) if row else None
        if self.feed.connected and invalidations == self._invalidations:
            self._rows[user_id] = value
            while len(self._rows) > self.size:
                self._rows.popitem(last=False)
        return value

    async def refresh(self, user_id: str) -> UserRow | None:
        """``get`` without the cached answer: for a decision that must see a change just announced."""
        self._rows.pop(user_id, None)
        return await self.get(user_id)

    async def _invalidate_forever(self) -> None:
        queue = self.feed.subscribe()
        try:
            while True:
                message: dict[str, Any] = await queue.get()
                if message.get("truncated"):
                    self._invalidations += 1
                    self._rows.clear()
                    continue
                for change in message.get("changes", []):
                    if change["type"].startswith("User."):
                        self._invalidations += 1
                        self._rows.pop(change["id"], None)
        finally:
            self.feed.unsubscribe(queue)
