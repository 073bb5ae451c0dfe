"""Rebuild the read models from offset 0 into a fresh schema, and optionally swap it in live.

The API keeps serving the live schema meanwhile. The swap happens in one transaction that
locks the live positions table (pausing the live runner), applies the last few events the
rebuild lacks, and renames the schemas; the live runner then finds positions in the renamed
schema and, the positions table being its truth, seeks to them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.adapters.kafka import end_offsets
from infra.adapters.postgres import check_schema, connection_kwargs
from infra.runtime.bootstrap import build_runner, require_services
from infra.runtime.settings import Settings
from projections.runner import ProjectionRunner

log = logging.getLogger("pipeline.rebuild")


async def event_end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """partition -> end offset of committed events now."""
    return await end_offsets(settings.kafka.bootstrap_servers, topic)


async def rebuild_read_models(settings: Settings, into: str | None = None, *, swap: bool = False) -> str:
    """Build every read model from offset 0 into ``into``; with ``swap``, make it the live schema."""
    require_services(settings)
    live = check_schema(settings.database.schema)
    target = check_schema(into or f"{live}_rebuild_{int(time.time())}")
    runner = await build_runner(settings, schema=target, group_suffix=f".rebuild.{time.time_ns()}")
    try:
        ends = await event_end_offsets(settings, runner.config.events_topic)
        total = sum(ends.values())
        print(f"rebuilding read models into schema {target} from {total} events", flush=True)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        while not await runner.caught_up_to(ends):
            if task.done():
                task.result()  # the runner died: raise its error
            async with runner.pool.connection() as conn:
                done = await runner.stored_positions(conn)
            print(f"  {sum(min(done.get(p, 0), end) for p, end in ends.items())}/{total} offsets", flush=True)
            await asyncio.sleep(1.0)
        stop.set()
        await task
        if swap:
            await _swap(settings, runner, live, target)
            print(f"schema {target} is now the live schema {live}", flush=True)
        else:
            print(f"rebuilt into schema {target}", flush=True)
        return target
    finally:
        await runner.pool.close()


async def _swap(settings: Settings, runner: ProjectionRunner, live: str, target: str) -> None:
    retired = f"{live}_retired_{int(time.time())}"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        kwargs: Any = connection_kwargs(target)
        async with await psycopg.AsyncConnection.connect(settings.database.url, **kwargs) as conn:
            async with conn.transaction():
                await conn.execute(f'LOCK TABLE "{live}".projection_positions IN ACCESS EXCLUSIVE MODE')
                cur = await conn.execute(
                    f'SELECT partition, next_offset FROM "{live}".projection_positions WHERE projection = %s'
                    " AND topic = %s",
                    (runner.config.projection, runner.config.events_topic),
                )
                live_positions = dict(await cur.fetchall())
                ours = await runner.stored_positions(conn)
                for partition, end in live_positions.items():
                    await _catch_up(conn, consumer, runner, partition, ours.get(partition, 0), end)
                await conn.execute(f'ALTER SCHEMA "{live}" RENAME TO "{retired}"')
                await conn.execute(f'ALTER SCHEMA "{target}" RENAME TO "{live}"')
        async with await psycopg.AsyncConnection.connect(settings.database.url, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA "{retired}" CASCADE')
    finally:
        await consumer.stop()


async def _catch_up(
    conn: psycopg.AsyncConnection[Any],
    consumer: AIOKafkaConsumer,
    runner: ProjectionRunner,
    partition: int,
    start: int,
    end: int,
) -> None:
    """Apply events [start, end) of one partition inside the swap transaction."""
    if start >= end:
        return
    tp = TopicPartition(runner.config.events_topic, partition)
    consumer.assign([tp])
    consumer.seek(tp, start)
    position = start
    while position < end:
        records = [r for r in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []) if r.offset < end]
        if records:  # the last few events, inside the swap: one by one, so a poison event is dead-lettered
            await runner.apply_records(conn, records, one_by_one=True)
        position = await consumer.position(tp)
    await conn.execute(
        "INSERT INTO projection_positions (projection, topic, partition, next_offset) VALUES (%s,%s,%s,%s)"
        " ON CONFLICT (projection, topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
        (runner.config.projection, runner.config.events_topic, partition, end),
    )
