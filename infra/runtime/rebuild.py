"""Rebuild the read models from offset 0 into a fresh schema, and optionally swap it in live.

The API keeps serving the live schema meanwhile. The swap happens in one transaction that
locks the live positions table (pausing the live runner), applies the last few events the
rebuild lacks, and renames the schemas; the live runner then finds positions in the renamed
schema and, the positions table being its truth, seeks to them.

Scoped (``only``): only the named read models are built. Each read model folds events into its
own tables and reads no other (``Projector.tables``), so one can be rebuilt alone: the others,
the positions, the aggregate versions and the dead letters stay as they are. Its swap, in the same
kind of transaction, replaces just its tables in the live schema with the rebuilt ones (after the
same catch-up to the live positions), and the rest of the rebuilt schema is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, TextIO

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.adapters.kafka import end_offsets
from infra.adapters.postgres import check_schema, connection_kwargs
from infra.runtime.bootstrap import build_runner, require_services
from infra.runtime.progress import Progress
from infra.runtime.settings import Settings
from projections.runner import ProjectionRunner

log = logging.getLogger("pipeline.rebuild")
POLL_S = 0.2  # how often the rebuild's position is read (a cheap query) for the progress bar


async def event_end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """partition -> end offset of committed events now."""
    return await end_offsets(settings.kafka.bootstrap_servers, topic)


async def rebuild_read_models(
    settings: Settings,
    into: str | None = None,
    *,
    swap: bool = False,
    only: Sequence[str] = (),
    progress: TextIO | None = None,
) -> str:
    """Build the read models (all, or those named in ``only``) from offset 0 into ``into``; with ``swap``,
    make them the live ones. Progress goes to ``progress`` (stderr by default)."""
    require_services(settings)
    live = check_schema(settings.database.schema)
    target = check_schema(into or f"{live}_rebuild_{int(time.time())}")
    runner = await build_runner(
        settings,
        schema=target,
        group_suffix=f".rebuild.{time.time_ns()}",
        only=only,
        batch_size=settings.kafka.rebuild_batch_size,
    )
    try:
        ends = await event_end_offsets(settings, runner.config.events_topic)
        total = sum(ends.values())
        models = ", ".join(p.name for p in runner.projectors)
        print(f"rebuilding {models} into schema {target} from {total} offsets", flush=True)
        bar = Progress(total, "rebuild", progress)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        while not await runner.caught_up_to(ends):
            if task.done():
                task.result()  # the runner died: raise its error
            bar.update(await _done(runner, ends), runner.applied)
            await asyncio.sleep(POLL_S)
        stop.set()
        await task
        bar.finish(total, runner.applied)  # caught up: the offsets left are transaction markers
        seconds = time.monotonic() - bar.started
        print(
            f"applied {runner.applied} events in {seconds:.2f}s ({runner.applied / seconds:.0f} events/s)", flush=True
        )
        if swap:
            await _swap(settings, runner, live, target, scoped=bool(only))
            print(f"{models} of schema {target} now live in schema {live}", flush=True)
        else:
            print(f"rebuilt into schema {target}", flush=True)
        return target
    finally:
        await runner.pool.close()


async def _done(runner: ProjectionRunner, ends: dict[int, int]) -> int:
    async with runner.pool.connection() as conn:
        done = await runner.stored_positions(conn)
    return sum(min(done.get(p, 0), end) for p, end in ends.items())


async def _swap(settings: Settings, runner: ProjectionRunner, live: str, target: str, *, scoped: bool) -> None:
    retired = target if scoped else f"{live}_retired_{int(time.time())}"
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
                if scoped:  # only these tables move; the live schema's others stay as they are
                    for table in (t for projector in runner.projectors for t in projector.tables):
                        await conn.execute(f'DROP TABLE "{live}"."{table}"')
                        await conn.execute(f'ALTER TABLE "{target}"."{table}" SET SCHEMA "{live}"')
                else:
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
