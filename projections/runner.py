"""The projection runner: events topic -> PostgreSQL read models, exactly once.

Each batch of one partition is applied in ONE PostgreSQL transaction together with the
partition's next offset in ``projection_positions``; the table, not Kafka's committed offsets,
is the truth. The runner seeks to it on assignment, and checks it again under a row lock on
every batch: records already applied are dropped, and a batch that starts past the stored
position (someone rewound the table, e.g. a rebuild) makes the runner seek back. On top of
that each aggregate's event is applied only if its version is the next one expected.
aiokafka is used rather than faust: faust keeps offsets in Kafka and cannot commit them in a
PostgreSQL transaction.

Dead letters (``projection_dead_letters``): no event blocks a partition.
- An event that cannot be decoded, or whose version leaves a gap, is recorded there and skipped.
- A batch is applied in one go (the fast path, pipelined): the events due are handed to each
  projector at once, which writes runs of one event type with one statement each
  (``Projector.apply_many``), so a batch costs a few statements, not one per event. If that fails, the transaction is
  rolled back and the same batch is applied again one event at a time, each under a SAVEPOINT;
  an event that fails there with a data error (``psycopg.DataError``/``IntegrityError``/
  ``ProgramLimitExceeded``, or a Python error on the event's content) is rolled back alone, recorded
  with the error, and the
  batch goes on. Positions still commit in the batch's transaction.
- A dead-lettered event still counts as applied for its aggregate's version (and an undecodable
  one too, when its headers name aggregate and version): the aggregate's later events apply, so
  e.g. deleting an object whose annotation could not be stored still deletes it. The read model
  then lacks that one event; a rebuild after a fix replays it.
- Connection failures (``OperationalError``, ``InterfaceError``, pool timeouts) are not the
  event's fault: the batch is read again after a backoff that doubles up to
  ``RETRY_BACKOFF_MAX_S``, logged once per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from commands.consumers import assigned_consumer, group_consumer
from commands.tracing import header_value, parent_context, traceparent
from projections.changes import change_payloads
from projections.events import EventDecoder, EventRecord
from projections.projector import Projector, columns

log = logging.getLogger("pipeline.projections")

# What one event's content can raise in a projector: it goes to the dead letters. A program limit
# (SQLSTATE class 54: a value too long for a tsvector, a statement too complex) is an OperationalError
# to psycopg, but the event's content causes it as surely as a data error: retried, it failed for ever.
DATA_ERRORS: tuple[type[Exception], ...] = (
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,
    KeyError,
    ValueError,
    TypeError,
    RecursionError,
)
# What the database connection can raise: the batch is retried after a backoff.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)
RETRY_BACKOFF_S = 0.1
RETRY_BACKOFF_MAX_S = 10.0
MAX_REASON_CHARS = 2000
# Settings of each transaction of a rebuild's fill (``bulk``), and of no other:
# - Commits are asynchronous: PostgreSQL acknowledges a commit before its WAL is flushed, so a crash of
#   PostgreSQL may lose the last batches acknowledged, rows and position together (never one without the
#   other: they are one transaction, and WAL is replayed in order). Safe there and nowhere else: no reader
#   waits on the new schema's positions (the API's change feed listens to the live schema), and the runner
#   reads its stored position again before every batch, so it re-applies whatever was lost (a batch that
#   starts past the stored position seeks back to it); the swap's catch-up reads the rebuilt schema's
#   positions inside its own transaction, which commits synchronously (as do the rebuild's index builds and
#   ANALYZE after the fill, whose commits flush the fill's WAL with theirs). The live runner must commit
#   synchronously: an API process may already have answered a read-your-writes wait with a position the
#   crash took back.
# - No sequential scans where an index serves: the fill's reads are key lookups of a batch's aggregates
#   (their versions, the owners of annotated objects: ``= ANY`` of ~1,000 ids), and over tables not yet
#   analyzed (autovacuum is paused for the fill, see infra.runtime.rebuild) the planner costed a (parallel)
#   scan of the whole table below that many index probes, so each batch read every row written before it:
#   quadratic in the log's length (at 250,000 aggregates 69 ms against 21 ms per lookup).
FILL_SETTINGS = "SELECT set_config('synchronous_commit', 'off', true), set_config('enable_seqscan', 'off', true)"


@dataclass(frozen=True)
class RunnerConfig:
    bootstrap_servers: str
    events_topic: str
    projection: str  # names the set of read models, and the consumer group
    group_id: str
    channel: str  # where committed batches are announced (see projections.changes)
    batch_size: int = 500
    fetch_max_wait_ms: int = 500


class ProjectionRunner:
    """Folds events into the read models of one schema."""

    def __init__(
        self,
        config: RunnerConfig,
        pool: AsyncConnectionPool,
        mapper: EventDecoder,
        projectors: Sequence[Projector],
        tracer: Tracer | None = None,
        bulk: bool = False,
    ) -> None:
        """``bulk``: a rebuild's fill, which nobody reads meanwhile: the projectors write by COPY where they
        can (``Projector.bulk``), so batches are applied outside pipeline mode (COPY has none), and each
        batch's transaction has the settings of ``FILL_SETTINGS`` (asynchronous commit, index lookups)."""
        self.config = config
        self.bulk = bulk
        for projector in projectors:
            projector.bulk = bulk
        self.tracer = tracer  # None: tracing off, no span and no header (infra.runtime.tracing)
        self.pool = pool
        self.mapper = mapper
        self.projectors = list(projectors)
        self.consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        # partition -> the stored position the consumer reads on from: where it was last sought to, or
        # the position this runner last committed. A batch that starts after it only skipped markers.
        self._continues_from: dict[int, int] = {}
        self._unapplied = False  # a fetched batch is waiting for the lock
        # Wall-clock times for the watchdog (infra.runtime.heartbeat): the loop turned / a batch was applied.
        self.last_loop = 0.0
        self.last_progress = 0.0
        self.failures: dict[int, int] = {}  # partition -> consecutive batches that failed to connect
        # For the metrics (infra.runtime.heartbeat writes them out): counters, and each partition's last
        # applied event's timestamp, from which the projection lag in seconds follows.
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.handled_at: dict[int, float] = {}
        self.applied = 0  # records committed since start (what a rebuild's progress counts)

    async def run(self, stop: asyncio.Event, partitions: Sequence[int] | None = None) -> None:
        """Apply events until ``stop`` is set: of the partitions the consumer group gives this runner, or
        of ``partitions`` alone (a rebuild's worker: no group, see infra.runtime.rebuild)."""
        sizes: dict[str, Any] = {
            "max_poll_records": self.config.batch_size,
            "fetch_max_wait_ms": self.config.fetch_max_wait_ms,
            # Enough per fetch for a full batch of typical (< 1 KB) events; Kafka's default is 1 MiB.
            "max_partition_fetch_bytes": max(1 << 20, self.config.batch_size * 1024),
        }
        if partitions is None:
            consumer = group_consumer(
                self.config.bootstrap_servers,
                self.config.group_id,
                self.config.events_topic,
                _SeekToStoredPositions(self),
                **sizes,
            )
        else:
            consumer = assigned_consumer(self.config.bootstrap_servers, **sizes)
        self.consumer = consumer
        await consumer.start()
        try:
            if partitions is not None:
                assigned = {TopicPartition(self.config.events_topic, p) for p in partitions}
                consumer.assign(list(assigned))
                await self.seek_to_stored(consumer, assigned)
            while not stop.is_set():
                self.last_loop = time.time()
                # Never fetch under the lock: while a rebalance is under way getmany waits for the new
                # assignment, which waits for on_partitions_revoked, which waits for this lock. Holding
                # it across getmany deadlocked the runner after a broker restart (issue 7).
                batches = await consumer.getmany(timeout_ms=200, max_records=self.config.batch_size)
                self._unapplied = bool(batches)
                async with self._lock:
                    # One transaction (and pool connection) per partition, side by side.
                    await asyncio.gather(*(self.apply_batch(consumer, tp, records) for tp, records in batches.items()))
                    self._unapplied = False
                if batches:
                    self.last_progress = time.time()
        finally:
            await consumer.stop()

    async def caught_up_to(self, ends: dict[int, int]) -> bool:
        """Has every record before ``ends`` been consumed and applied?

        Stored positions cannot say it: transaction markers take offsets after the last event.
        """
        consumer = self.consumer
        if consumer is None:
            return False
        async with self._lock:
            if self._unapplied:  # fetched (the position moved on) but not applied yet
                return False
            assigned = {tp.partition: tp for tp in consumer.assignment()}
            for partition, end in ends.items():
                if end == 0:
                    continue
                if partition not in assigned or await consumer.position(assigned[partition]) < end:
                    return False
        return True

    async def stored_positions(self, conn: AsyncConnection[Any]) -> dict[int, int]:
        """partition -> next offset to apply, as committed in PostgreSQL."""
        cur = await conn.execute(
            "SELECT partition, next_offset FROM projection_positions WHERE projection = %s AND topic = %s",
            (self.config.projection, self.config.events_topic),
        )
        return {partition: offset for partition, offset in await cur.fetchall()}

    async def seek_to_stored(self, consumer: AIOKafkaConsumer, partitions: set[TopicPartition]) -> None:
        async with self.pool.connection() as conn:
            positions = await self.stored_positions(conn)
        for tp in partitions:
            self._continues_from[tp.partition] = positions.get(tp.partition, 0)
            consumer.seek(tp, self._continues_from[tp.partition])

    async def apply_batch(self, consumer: AIOKafkaConsumer, tp: TopicPartition, records: list[Any]) -> None:
        """Apply one partition's batch and its new position in one transaction (see Dead letters above)."""
        try:
            try:
                applied = await self._apply_batch(consumer, tp, records, one_by_one=False)
            except Exception as exc:  # in pipeline mode a data error may surface as PipelineAborted
                # The slow path tells the two apart: a data error dead-letters its event there, a
                # connection error fails it too and is retried below.
                log.warning(
                    "partition %s: batch at offsets %s..%s cannot be applied at once (%s); applying it event by event",
                    tp.partition,
                    records[0].offset,
                    records[-1].offset,
                    _describe(exc),
                )
                applied = await self._apply_batch(consumer, tp, records, one_by_one=True)
        except TRANSIENT_ERRORS as exc:
            failures = self.failures[tp.partition] = self.failures.get(tp.partition, 0) + 1
            delay = min(RETRY_BACKOFF_S * 2 ** (failures - 1), RETRY_BACKOFF_MAX_S)
            log.error(
                "partition %s: batch not applied (%s; %s in a row); retrying in %.1fs",
                tp.partition,
                _describe(exc),
                failures,
                delay,
            )
            consumer.seek(tp, records[0].offset)
            await asyncio.sleep(delay)
            return
        self.failures.pop(tp.partition, None)
        if applied:  # committed: count them (a failed transaction is applied again, and counted then)
            self._continues_from[tp.partition] = applied[-1].offset + 1
            key = ("pipeline_projection_events_applied", (("projection", self.config.projection),))
            self.counters[key] = self.counters.get(key, 0) + len(applied)
            self.applied += len(applied)
            self.handled_at[tp.partition] = applied[-1].timestamp / 1000

    async def _apply_batch(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, records: list[Any], one_by_one: bool
    ) -> list[Any]:
        """Apply the records not applied yet; those applied (empty when it only re-positioned)."""
        spans: dict[tuple[str, int], Span] = {}  # (aggregate, version) -> "apply <type>", when tracing
        # Outermost, so each event's span ends after the commit (or as failed with the batch).
        with _ending_spans(spans) if self.tracer is not None else contextlib.nullcontext():
            async with self.pool.connection() as conn, conn.transaction():
                if self.bulk:
                    await conn.execute(FILL_SETTINGS)
                return await self._apply_in(conn, consumer, tp, records, one_by_one, spans)

    async def _apply_in(
        self,
        conn: AsyncConnection[Any],
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        records: list[Any],
        one_by_one: bool,
        spans: dict[tuple[str, int], Span],
    ) -> list[Any]:
        cur = await conn.execute(
            "SELECT next_offset FROM projection_positions WHERE projection = %s AND topic = %s"
            " AND partition = %s FOR UPDATE",
            (self.config.projection, self.config.events_topic, tp.partition),
        )
        row = await cur.fetchone()
        stored = row[0] if row else 0
        if records[0].offset > stored and self._continues_from.get(tp.partition) != stored:
            # Someone else moved the stored position (a rebuild rewound the table). A gap after a
            # position this consumer read on from is only transaction markers (they take offsets
            # too), which is every batch's case: re-reading then would cost a fetch per batch.
            log.info("partition %s: stored position %s is before the batch; reading from it", tp.partition, stored)
            consumer.seek(tp, stored)
            self._continues_from[tp.partition] = stored
            return []
        fresh = [r for r in records if r.offset >= stored]
        if not fresh:
            return []
        if self.tracer is not None:
            self._start_spans(fresh, spans)
        changes = await self.apply_records(conn, fresh, one_by_one)
        if spans:  # the live message (api/hub.py) continues each event's trace
            for change in changes:
                span = spans.get((change["id"], change["version"]))
                if span is not None:
                    change["traceparent"] = traceparent(span)
        next_offset = fresh[-1].offset + 1
        await conn.execute(
            "INSERT INTO projection_positions (projection, topic, partition, next_offset) VALUES (%s,%s,%s,%s)"
            " ON CONFLICT (projection, topic, partition) DO UPDATE SET next_offset = excluded.next_offset,"
            " updated_at = now()",
            (self.config.projection, self.config.events_topic, tp.partition, next_offset),
        )
        # Delivered by PostgreSQL only when this transaction commits (the parts in any order: each stands
        # alone). One statement for one part or many, so the path a large batch takes is every commit's.
        await conn.execute(
            "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload",
            (self.config.channel, change_payloads(self.config.projection, tp.partition, next_offset, changes)),
        )
        return fresh

    def _start_spans(self, records: list[Any], spans: dict[tuple[str, int], Span]) -> None:
        """A span per event that carries a trace, a child of the processor's span for its command."""
        assert self.tracer is not None
        for record in records:
            parent = parent_context(header_value(record.headers))
            if parent is None:
                continue
            headers = dict(record.headers)
            try:  # keyed as apply_records names its changes (EventRecord: the headers as they are)
                key = (headers["aggregate_id"].decode(), int(headers["aggregate_version"]))
            except (KeyError, ValueError):  # not one of ours: it is dead-lettered, untraced
                continue
            event_type = headers.get("event_type", b"").decode("latin-1")
            spans[key] = self.tracer.start_span(
                f"apply {event_type.rsplit(':', 1)[-1]}",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes={
                    "pipeline.projection": self.config.projection,
                    "messaging.kafka.partition": record.partition,
                    "messaging.kafka.offset": record.offset,
                },
            )

    async def apply_records(
        self, conn: AsyncConnection[Any], records: list[Any], one_by_one: bool = False
    ) -> list[dict[str, Any]]:
        """Apply decoded events in order, each at most once per aggregate version; return what changed.

        ``one_by_one`` applies each event under its own SAVEPOINT and dead-letters those a projector
        cannot store; otherwise a data error propagates (and the caller takes the slow path).
        """
        events: list[EventRecord] = []
        skipped: list[tuple[str, int]] = []  # (aggregate, version) of undecodable events that name them
        for record in records:
            try:
                events.append(EventRecord.from_kafka(record, self.mapper))
            except Exception as exc:  # decoding is pure: whatever it raises is this record's fault
                await self._dead_letter(conn, record, f"undecodable event: {_describe(exc)}")
                named = _named_version(record)
                if named is not None:
                    skipped.append(named)
        ids = list({e.aggregate_id for e in events} | {aggregate_id for aggregate_id, _ in skipped})
        cur = await conn.execute(
            "SELECT aggregate_id::text, version FROM aggregate_versions WHERE aggregate_id = ANY(%b::uuid[])",
            (ids,),
        )
        versions: dict[str, int] = dict(await cur.fetchall())
        changed: dict[str, int] = {}
        for aggregate_id, version in skipped:
            if version == versions.get(aggregate_id, 0) + 1:
                versions[aggregate_id] = changed[aggregate_id] = version
        changes: list[dict[str, Any]] = []
        due: list[EventRecord] = []  # what the fast path applies, each projector in one go
        async with contextlib.AsyncExitStack() as stack:
            if not one_by_one and not self.bulk:
                await stack.enter_async_context(conn.pipeline())
            cursor = await stack.enter_async_context(conn.cursor())
            for event in events:
                current = versions.get(event.aggregate_id, 0)
                if event.version <= current:
                    continue  # applied before: exactly once even if Kafka redelivers
                if event.version != current + 1:
                    await self._dead_letter(conn, event, f"version gap: at {current}, got {event.version}")
                    continue
                if one_by_one:
                    try:
                        async with conn.transaction():  # a SAVEPOINT: a failure undoes this event only
                            for projector in self.projectors:
                                await projector.apply(cursor, event)
                    except DATA_ERRORS as exc:
                        await self._dead_letter(conn, event, f"{event.type} not applied: {_describe(exc)}")
                        versions[event.aggregate_id] = changed[event.aggregate_id] = event.version
                        continue
                else:
                    due.append(event)
                versions[event.aggregate_id] = changed[event.aggregate_id] = event.version
                changes.append({"id": event.aggregate_id, "type": event.type, "version": event.version})
            for projector in self.projectors if due else ():
                await projector.apply_many(cursor, due)
            if changed:
                await cursor.execute(
                    "INSERT INTO aggregate_versions (aggregate_id, version)"
                    " SELECT * FROM unnest(%b::uuid[], %b::int4[])"
                    " ON CONFLICT (aggregate_id) DO UPDATE SET version = excluded.version",
                    columns(changed.items(), 2),
                )
        return changes

    async def _dead_letter(self, conn: AsyncConnection[Any], record: Any, reason: str) -> None:
        aggregate = getattr(record, "aggregate_id", None)
        if aggregate is not None:
            reason = f"{reason} (aggregate {aggregate} version {record.version})"
        reason = reason.replace("\x00", "\\x00")[:MAX_REASON_CHARS]  # the reason must be storable too
        log.error("event at %s:%s not applied: %s", record.partition, record.offset, reason)
        await conn.execute(
            "INSERT INTO projection_dead_letters (topic_partition, topic_offset, reason) VALUES (%s, %s, %s)",
            (record.partition, record.offset, reason),
        )


@contextlib.contextmanager
def _ending_spans(spans: dict[tuple[str, int], Span]) -> Iterator[None]:
    """End the events' spans when the block does: applied, or failed with the batch."""
    try:
        yield
    except BaseException as exc:
        for span in spans.values():
            span.set_status(StatusCode.ERROR, f"batch not applied: {type(exc).__name__}")
            span.end()
        raise
    for span in spans.values():
        span.end()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _named_version(record: Any) -> tuple[str, int] | None:
    """(aggregate id, version) from an undecodable record's headers, when they say so."""
    try:
        headers = {key: value.decode() for key, value in record.headers}
        return str(UUID(headers["aggregate_id"])), int(headers["aggregate_version"])
    except Exception:
        return None


class _SeekToStoredPositions(ConsumerRebalanceListener):
    def __init__(self, runner: ProjectionRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.runner._lock:  # let the batch in flight finish first
            pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self.runner.consumer is not None and assigned:
            await self.runner.seek_to_stored(self.runner.consumer, assigned)
