"""Connections for one-statement reads: a few of the pool's, kept out in autocommit and handed out in turn.

The API's reads by id run one prepared statement each. Through the pool each one paid for the pool's
checkout and return (its lock, its condition, and at 64 concurrent reads a waiting client with an
``asyncio.wait_for`` task) and for switching autocommit on and off: 109-134 µs of the API's CPU per
read against 58-65 µs for these connections (64 concurrent reads of one row, 10 connections, uvloop),
on reads that cost the API about 0.45 ms in all.

Up to ``size`` connections are taken from the pool when first needed and kept; a read takes an idle
one or waits, in order of arrival, for the next one given back (at most ``timeout`` seconds, then
``PoolTimeout``, as the pool's checkout would). A connection given back broken or not idle (e.g. its
query was cancelled) goes back to the pool, which replaces it, and its place is taken from the pool
again. Closing gives the idle connections back; those in use go back when they are returned.
A connection is given back to the pool once past the pool's ``max_lifetime`` (an hour by default, as
the pool stamps it on each connection it opens), after the read that finds it so: the pool closes it
and opens another, so a long-running API does not keep one PostgreSQL backend (and its memory, and
the catalogue caches of its prepared statements) for ever, as the pool's own connections do not.
A read holds its connection at most ``hold_seconds`` (the pool's, a BoundedPool's: a PostgreSQL that
does not answer at all never sends its statement timeout), then its work is cancelled and
psycopg.OperationalError raised, as the pool's own connections do.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from infra.adapters.postgres import answered_within

Connection = AsyncConnection[Any]
Row = TypeVar("Row")


class ReadConnections:
    """Hands out up to ``size`` of ``pool``'s connections, in autocommit, for reads of one statement."""

    def __init__(self, pool: AsyncConnectionPool, size: int, timeout: float) -> None:
        self._pool = pool
        self.hold_seconds: float | None = getattr(pool, "hold_seconds", None)
        self._size = max(1, size)
        self._timeout = timeout
        self._idle: list[Connection] = []
        # A waiter's future gets a connection, or None: a place is free, take a new one from the pool.
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._taken = 0  # connections (or places being filled) held out of the pool
        self._closed = False

    async def read(self, query: Callable[..., Awaitable[Row]], *args: Any) -> Row:
        """``query(connection, *args)`` on one of the connections. A connection found broken (PostgreSQL
        restarted: the idle ones went with it, unnoticed until used) is replaced, the pool's idle
        connections checked, and the read runs once more: reads are one statement, safe to repeat."""
        for attempt in (1, 2):
            async with self.connection() as conn:
                try:
                    return await query(conn, *args)
                except psycopg.OperationalError:
                    if attempt == 2 or not conn.broken:
                        raise
            await self._after_broken()
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _after_broken(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await self._discard(connection)
        await self._pool.check()  # the pool's own idle connections: broken ones replaced

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """``async with reads.connection() as conn``: one connection in autocommit for one statement,
        held at most ``hold_seconds``."""
        async with answered_within(self.hold_seconds):
            connection = await self.take()
            try:
                yield connection
            finally:
                await self.give(connection)  # one cancelled mid-query goes back to the pool: replaced

    async def take(self) -> Connection:
        if self._closed:
            raise PoolClosed("the read connections are closed")
        if self._idle:
            return self._idle.pop()
        if self._taken < self._size:
            self._taken += 1
            return await self._new()
        future: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        timer = asyncio.get_running_loop().call_later(self._timeout, _expire, future, self._timeout)
        try:
            connection = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                handed = future.result()  # handed over just as this read was cancelled: to the next one
                if handed is None:
                    self._free_place()
                else:
                    self._pass_on(handed)
            raise
        finally:
            timer.cancel()
        return connection if connection is not None else await self._new()

    async def give(self, connection: Connection) -> None:
        if (
            self._closed
            or connection.closed
            or connection.pgconn.transaction_status != TransactionStatus.IDLE
            or _expired(connection)
        ):
            await self._discard(connection)  # the pool replaces one closed, broken or past its lifetime
        else:
            self._pass_on(connection)

    async def close(self) -> None:
        """Give the idle connections back to the pool; later reads raise PoolClosed."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await self._discard(connection)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolClosed("the read connections are closed"))

    async def _new(self) -> Connection:
        """A connection from the pool, for a place already counted in ``_taken``."""
        try:
            connection = await self._pool.getconn()
        except BaseException:
            self._free_place()
            raise
        await connection.set_autocommit(True)  # client-side only: no round trip
        return connection

    def _pass_on(self, connection: Connection) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    async def _discard(self, connection: Connection) -> None:
        if not connection.closed and connection.pgconn.transaction_status != TransactionStatus.IDLE:
            await connection.close()  # e.g. a cancelled query: the pool replaces a closed connection
        elif not connection.closed:
            await connection.set_autocommit(False)  # back as the pool made it
        self._free_place()
        await self._pool.putconn(connection)

    def _free_place(self) -> None:
        while self._waiters and not self._closed:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # its reader takes a new connection in this place
                return
        self._taken -= 1


def _expired(connection: Connection) -> bool:
    """Past the pool's max_lifetime: psycopg_pool stamps ``_expire_at`` (time.monotonic) on each connection
    it opens, and on its return closes one that is past it and opens another (AsyncConnectionPool.putconn)."""
    return bool(getattr(connection, "_expire_at", math.inf) <= time.monotonic())


def _expire(future: asyncio.Future[Connection | None], timeout: float) -> None:
    if not future.done():
        future.set_exception(PoolTimeout(f"no read connection free within {timeout:g} s"))
