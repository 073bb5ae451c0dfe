"""The read connections (infra/adapters/read_connections.py) against the real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from infra.adapters.postgres import open_pool
from infra.adapters.read_connections import ReadConnections
from tests.integration.harness import eventually


@pytest.fixture
async def pool(services: dict[str, str]) -> AsyncIterator[AsyncConnectionPool]:
    opened = await open_pool(services["DATABASE_URL"], "public", min_size=1, max_size=4, prepare=True)
    try:
        yield opened
    finally:
        await opened.close()


async def backend_of(reads: ReadConnections, sleep: float = 0.0) -> int:
    async with reads.connection() as conn:
        assert conn.autocommit  # one statement, no BEGIN/COMMIT round trips
        cur = await conn.execute("SELECT pg_backend_pid(), pg_sleep(%s)", (sleep,))
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def test_concurrent_reads_share_at_most_size_connections_and_all_complete(pool: AsyncConnectionPool) -> None:
    reads = ReadConnections(pool, 2, timeout=10)
    backends = await asyncio.gather(*(backend_of(reads, 0.02) for _ in range(12)))
    assert len(set(backends)) == 2
    assert pool.get_stats()["pool_size"] - pool.get_stats().get("pool_available", 0) >= 2  # held out of the pool
    await reads.close()
    async with pool.connection() as conn:  # given back as the pool made them
        assert not conn.autocommit


async def test_a_read_waits_at_most_the_timeout_for_a_busy_connection(pool: AsyncConnectionPool) -> None:
    reads = ReadConnections(pool, 1, timeout=0.2)
    async with reads.connection():
        with pytest.raises(PoolTimeout):
            await backend_of(reads)
    assert await backend_of(reads) > 0  # the connection given back serves the next read
    await reads.close()
    with pytest.raises(PoolClosed):
        await backend_of(reads)


async def test_a_cancelled_waiter_does_not_lose_the_connection(pool: AsyncConnectionPool) -> None:
    reads = ReadConnections(pool, 1, timeout=10)
    lease = reads.connection()
    held = await lease.__aenter__()
    waiter = asyncio.create_task(backend_of(reads))
    await asyncio.sleep(0)  # the waiter queues behind the held connection
    waiter.cancel()
    await lease.__aexit__(None, None, None)
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await asyncio.wait_for(backend_of(reads), 5) == held.pgconn.backend_pid
    await reads.close()


async def test_a_read_cancelled_mid_query_leaves_a_working_connection(pool: AsyncConnectionPool) -> None:
    reads = ReadConnections(pool, 1, timeout=10)
    first = await backend_of(reads)
    slow = asyncio.create_task(backend_of(reads, 30))

    async def running() -> bool:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'", (first,)
            )
            row = await cur.fetchone()
            return row is not None and row[0] == 1

    await eventually(running, timeout=10, what="the slow read to run")
    queued = asyncio.create_task(backend_of(reads))  # waits for the only place
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert await asyncio.wait_for(queued, 10) > 0  # closed and replaced (or, cancelled cleanly, handed on)
    assert await backend_of(reads) > 0
    await reads.close()


async def test_a_read_holds_its_connection_at_most_the_pools_bound(services: dict[str, str]) -> None:
    # With a statement timeout the pool bounds how long a connection is held (BoundedPool): a
    # PostgreSQL that does not answer at all never sends its timeout. The read connections keep it.
    opened = await open_pool(services["DATABASE_URL"], "public", min_size=1, max_size=4, statement_timeout_ms=60_000)
    opened.hold_seconds = 0.5  # type: ignore[attr-defined]
    reads = ReadConnections(opened, 1, timeout=10)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(psycopg.OperationalError, match="did not answer"):
            await backend_of(reads, sleep=30)
        assert asyncio.get_running_loop().time() - started < 5
        assert await backend_of(reads) > 0  # its place is taken again: the next read is served
    finally:
        await reads.close()
        await opened.close()


async def test_a_read_on_connections_the_server_dropped_runs_again(pool: AsyncConnectionPool) -> None:
    # PostgreSQL restarted: every idle connection is dead, unnoticed until used. The read is repeated
    # once on a working connection instead of answering 503.
    reads = ReadConnections(pool, 3, timeout=10)
    held = await asyncio.gather(*(backend_of(reads, 0.05) for _ in range(6)))
    async with pool.connection() as admin:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (list(set(held)),))

    async def backend(conn: Any) -> int:
        row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
        return int(row[0])

    assert await reads.read(backend) not in held
    assert await reads.read(backend) not in held
    await reads.close()
