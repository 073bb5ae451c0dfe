"""Rebuild the read models from offset 0 into a fresh schema, and optionally swap it in live.

The API keeps serving the live schema meanwhile. The swap happens in one transaction that
locks the live positions table (pausing the live runner), applies the last few events the
rebuild lacks, and renames the schemas; the live runner then finds positions in the renamed
schema and, the positions table being its truth, seeks to them.

Workers: the partitions are shared out among ``kafka.rebuild_workers`` processes (default one per
core, at most one per partition): this process applies the first share, spawned processes the others,
each with its own runner, consumer (assigned its partitions, no group) and connections into the same
schema. Partitions are independent (every aggregate lives in one; each commits its own position), so
the result is the one a single process builds; the audit log's global sequence interleaves the
partitions, as it does live. Progress reads the committed positions, and each worker's count of
applied events through shared memory. A worker that fails fails the rebuild.

Scoped (``only``): only the named read models are built. Each read model folds events into its
own tables and reads no other (``Projector.tables``), so one can be rebuilt alone: the others,
the positions, the aggregate versions and the dead letters stay as they are. Its swap, in the same
kind of transaction, replaces just its tables in the live schema with the rebuilt ones (after the
same catch-up to the live positions), and the rest of the rebuilt schema is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any, TextIO

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.adapters.kafka import end_offsets
from infra.adapters.postgres import check_schema, connection_kwargs
from infra.runtime import event_loop, heap
from infra.runtime.bootstrap import build_runner, require_services
from infra.runtime.progress import Progress
from infra.runtime.settings import Settings
from projections.runner import ProjectionRunner

log = logging.getLogger("pipeline.rebuild")
POLL_S = 0.2  # how often the rebuild's position is read (a cheap query) for the progress bar
# Allocations (less deallocations) of container objects between the cyclic collector's young collections
# in a rebuild's processes; Python's default is 700. A batch of 5,000 events makes tens of thousands of
# dicts and records that live until the batch commits, and young collections every 700 of them walked
# them again and again and promoted them into ever larger older-generation collections (A/B on 200,000
# events: 25% of the rebuild's own CPU). Events hold no reference cycles: refcounting frees them.
REBUILD_GC_THRESHOLD = 50_000
# PostgreSQL's memory for each index a rebuild builds after its fill (its default, 64MB, spills a large
# sort or GIN build to disk); up to the pool's size of them run at once.
INDEX_BUILD_MEMORY = "256MB"


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
    with heap.collecting_less(REBUILD_GC_THRESHOLD):
        return await _rebuild(settings, into, swap, only, progress)


async def _rebuild(
    settings: Settings, into: str | None, swap: bool, only: Sequence[str], progress: TextIO | None
) -> str:
    live = check_schema(settings.database.schema)
    target = check_schema(into or f"{live}_rebuild_{int(time.time())}")
    group_suffix = f".rebuild.{time.time_ns()}"
    runner = await _rebuild_runner(settings, target, group_suffix, only)
    paused: list[str] = []
    deferred = Deferred()
    try:
        paused = await _pause_autovacuum(runner, target)
        deferred = await _defer_indexes(runner, target)
        ends = await event_end_offsets(settings, runner.config.events_topic)
        total = sum(ends.values())
        models = ", ".join(p.name for p in runner.projectors)
        shares = partition_shares(sorted(ends), settings.kafka.rebuild_workers or os.cpu_count() or 1)
        print(f"rebuilding {models} into schema {target} from {total} offsets with {len(shares)} worker(s)", flush=True)
        bar = Progress(total, "rebuild", progress)
        context = multiprocessing.get_context("spawn")  # not fork: this process has a loop and sockets open
        counts = [context.Value("q", 0, lock=False) for _ in shares]
        workers = [
            context.Process(
                target=_worker,
                args=(settings, target, group_suffix, tuple(only), share, ends, count),
                name=f"for partitions {', '.join(map(str, share))}",
            )
            for share, count in zip(shares[1:], counts[1:], strict=True)
        ]
        for worker in workers:
            worker.start()
        try:
            own = asyncio.create_task(_apply_share(runner, shares[0], ends, counts[0]))
            while not own.done() or any(w.is_alive() for w in workers):
                _check(own, workers)
                bar.update(await _done(runner, ends), sum(c.value for c in counts))
                await asyncio.sleep(POLL_S)
            _check(own, workers)
        finally:
            for worker in workers:
                if worker.is_alive():
                    worker.terminate()
                worker.join()
        applied = sum(c.value for c in counts)
        bar.finish(total, applied)  # caught up: the offsets left are transaction markers
        building = time.monotonic()
        await _build_indexes(runner, deferred)  # in the rebuild's time too, before ANALYZE reads them
        if deferred:
            built = len(deferred.indexes)
            print(f"built {built} index(es) after the fill in {time.monotonic() - building:.2f}s", flush=True)
        deferred = Deferred()
        await _resume_autovacuum(runner, target, paused, analyze=True)  # in the rebuild's time: it is its cost
        paused = []
        seconds = time.monotonic() - bar.started
        print(f"applied {applied} events in {seconds:.2f}s ({applied / seconds:.0f} events/s)", flush=True)
        if swap:
            await _swap(settings, runner, live, target, scoped=bool(only))
            print(f"{models} of schema {target} now live in schema {live}", flush=True)
        else:
            print(f"rebuilt into schema {target}", flush=True)
        return target
    finally:
        if deferred:  # it failed: the schema keeps its indexes all the same (a later rebuild into it needs them)
            with contextlib.suppress(psycopg.Error):
                await _build_indexes(runner, deferred)
        if paused:  # it failed: the schema stays as it is, with autovacuum as it was
            with contextlib.suppress(psycopg.Error):
                await _resume_autovacuum(runner, target, paused, analyze=False)
        await runner.pool.close()


async def _rebuild_runner(settings: Settings, target: str, group_suffix: str, only: Sequence[str]) -> ProjectionRunner:
    """A runner that fills ``target``: rebuild-sized batches, inserts by COPY where they can (``bulk``)."""
    return await build_runner(
        settings,
        schema=target,
        group_suffix=group_suffix,
        only=only,
        batch_size=settings.kafka.rebuild_batch_size,
        bulk=True,
    )


async def _pause_autovacuum(runner: ProjectionRunner, schema: str) -> list[str]:
    """Turn autovacuum off for the tables of ``schema`` (the rebuild's own) while it fills them; their names.

    Autovacuum would vacuum and analyze each growing table again and again meanwhile (nothing in them
    is dead, and nobody reads them yet); one ANALYZE at the end (``_resume_autovacuum``) gives the
    planner its statistics. A/B at 1,000,000 events: PostgreSQL's CPU over the rebuild 67.1 s against
    79.9 s, the final ANALYZE (2.3 s) included.
    """
    async with runner.pool.connection() as conn:
        cur = await conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", (schema,))
        tables = [str(name) for (name,) in await cur.fetchall()]
        for table in tables:
            await conn.execute(f'ALTER TABLE "{schema}"."{table}" SET (autovacuum_enabled = false)')
    return tables


async def _resume_autovacuum(runner: ProjectionRunner, schema: str, tables: Sequence[str], analyze: bool) -> None:
    """Autovacuum back on for ``tables`` of ``schema`` (the migrations set no storage options of their
    own), each ANALYZEd first when ``analyze``."""
    async with runner.pool.connection() as conn:  # one transaction, committed at the end of the block
        for table in tables:
            if analyze:
                await conn.execute(f'ANALYZE "{schema}"."{table}"')
            await conn.execute(f'ALTER TABLE "{schema}"."{table}" RESET (autovacuum_enabled)')


@dataclass(frozen=True)
class Deferred:
    """What ``_defer_indexes`` dropped, as the statements that make it again."""

    indexes: list[str] = field(default_factory=list)  # CREATE [UNIQUE] INDEX, built side by side
    constraints: list[str] = field(default_factory=list)  # ALTER TABLE ... ADD CONSTRAINT ... USING INDEX, after

    def __bool__(self) -> bool:
        return bool(self.indexes or self.constraints)


async def _defer_indexes(runner: ProjectionRunner, schema: str) -> Deferred:
    """Drop the secondary indexes of the rebuilt read models' tables in ``schema`` before the fill, and the
    unique constraints the fill cannot violate (``Projector.fill_deferred_constraints``); what makes them
    again, for ``_build_indexes`` after it.

    Building an index over the filled table (one sort, or one bulk GIN build) costs far less than
    inserting into it row by row, batch after batch (A/B in README.md). Kept: every unique index and every
    index behind a constraint (the fill relies on them: ON CONFLICT, and a duplicate is an event's error,
    dead-lettered, not a failed index build at the end), and the indexes a projector's own writes look up
    by (``Projector.fill_indexes``); but for the deferred constraints, which no event of the fill can
    violate (their indexes are built with the others, then attached to them under the same names). Nobody
    reads the new schema before it is built.
    """
    tables = [table for projector in runner.projectors for table in projector.tables]
    kept = [index for projector in runner.projectors for index in projector.fill_indexes]
    async with runner.pool.connection() as conn:  # one transaction: dropped together, or not at all
        cur = await conn.execute(
            "SELECT index.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i"
            " JOIN pg_class index ON index.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid"
            " JOIN pg_namespace n ON n.oid = t.relnamespace"
            " WHERE n.nspname = %s AND t.relname = ANY(%s) AND NOT index.relname = ANY(%s) AND NOT i.indisunique"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY index.relname",
            (schema, tables, kept),
        )
        indexes = [(str(name), str(definition)) for name, definition in await cur.fetchall()]
        for name, _definition in indexes:
            await conn.execute(f'DROP INDEX "{schema}"."{name}"')
        deferred = Deferred(indexes=[definition for _name, definition in indexes])
        cur = await conn.execute(
            "SELECT c.conname, t.relname, pg_get_indexdef(c.conindid) FROM pg_constraint c"
            " JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = c.connamespace"
            " WHERE n.nspname = %s AND c.contype = 'u' AND c.conname = ANY(%s) ORDER BY c.conname",
            (schema, [name for projector in runner.projectors for name in projector.fill_deferred_constraints]),
        )
        for name, table, definition in await cur.fetchall():
            await conn.execute(f'ALTER TABLE "{schema}"."{table}" DROP CONSTRAINT "{name}"')
            deferred.indexes.append(str(definition))  # the constraint's index, named as the constraint
            deferred.constraints.append(
                f'ALTER TABLE "{schema}"."{table}" ADD CONSTRAINT "{name}" UNIQUE USING INDEX "{name}"'
            )
    return deferred


async def _build_indexes(runner: ProjectionRunner, deferred: Deferred) -> None:
    """Create the indexes ``_defer_indexes`` dropped, side by side on the pool's connections; then attach
    the constraints to theirs, one after the other (each locks its table, briefly: the index is built)."""

    async def build(definition: str) -> None:
        async with runner.pool.connection() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL maintenance_work_mem = '{INDEX_BUILD_MEMORY}'")
            await conn.execute(definition)

    await asyncio.gather(*(build(definition) for definition in deferred.indexes))
    async with runner.pool.connection() as conn, conn.transaction():
        for statement in deferred.constraints:
            await conn.execute(statement)


def partition_shares(partitions: Sequence[int], workers: int) -> list[list[int]]:
    """``partitions`` dealt out to at most ``workers`` workers (none left empty, but one when there are none)."""
    count = max(1, min(workers, len(partitions)))
    return [list(partitions[i::count]) for i in range(count)]


async def _apply_share(runner: ProjectionRunner, partitions: Sequence[int], ends: dict[int, int], count: Any) -> None:
    """Apply ``partitions`` until caught up to ``ends``, keeping ``count`` (a shared integer) at the events applied."""
    mine = {p: ends[p] for p in partitions}
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop, partitions=partitions))
    while not await runner.caught_up_to(mine):
        if task.done():
            task.result()  # the runner died: raise its error
        count.value = runner.applied
        await asyncio.sleep(POLL_S)
    stop.set()
    await task
    count.value = runner.applied


def _worker(
    settings: Settings,
    target: str,
    group_suffix: str,
    only: tuple[str, ...],
    partitions: list[int],
    ends: dict[int, int],
    count: Any,
) -> None:
    """A spawned worker process: its own runner into ``target`` for ``partitions``."""

    async def work() -> None:
        runner = await _rebuild_runner(settings, target, group_suffix, only)
        try:
            await _apply_share(runner, partitions, ends, count)
        finally:
            await runner.pool.close()

    with heap.collecting_less(REBUILD_GC_THRESHOLD):
        event_loop.run(work())


def _check(own: asyncio.Task[None], workers: Sequence[BaseProcess]) -> None:
    """Raise if this process's share or a worker process failed."""
    if own.done():
        own.result()
    for worker in workers:
        if worker.exitcode not in (None, 0):
            raise RuntimeError(f"rebuild worker {worker.name} exited with {worker.exitcode}; see its error above")


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
