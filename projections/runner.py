"""The projection runner: events topic -> PostgreSQL read models, exactly once.

Each batch of one partition is applied in ONE PostgreSQL transaction together with the
partition's next offset in ``projection_positions``; the table, not Kafka's committed offsets,
is the truth. The runner seeks to it on assignment, and checks it again under a row lock on
every batch: records already applied are dropped, and a batch that starts past the stored
position (someone rewound the table, e.g. a rebuild) makes the runner seek back. On top of
that each aggregate's event is applied only if its version is the next one expected.
aiokafka is used rather than faust: faust keeps offsets in Kafka and cannot commit them in a
PostgreSQL transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from eventsourcing.persistence import Mapper
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from projections.changes import change_payload
from projections.events import EventRecord
from projections.projector import Projector

log = logging.getLogger("pipeline.projections")


@dataclass(frozen=True)
class RunnerConfig:
    bootstrap_servers: str
    events_topic: str
    projection: str  # names the set of read models, and the consumer group
    group_id: str
    channel: str  # where committed batches are announced (see projections.changes)
    batch_size: int = 500


class ProjectionRunner:
    """Folds events into the read models of one schema."""

    def __init__(
        self,
        config: RunnerConfig,
        pool: AsyncConnectionPool,
        mapper: Mapper[UUID],
        projectors: Sequence[Projector],
    ) -> None:
        self.config = config
        self.pool = pool
        self.mapper = mapper
        self.projectors = list(projectors)
        self.consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._sought: dict[int, int] = {}  # partition -> stored position the consumer was last sought to
        self._unapplied = False  # a fetched batch is waiting for the lock
        # Wall-clock times for the watchdog (infra.heartbeat): the loop turned / a batch was applied.
        self.last_loop = 0.0
        self.last_progress = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Apply events until ``stop`` is set."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers,
            group_id=self.config.group_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_poll_records=self.config.batch_size,
        )
        self.consumer = consumer
        consumer.subscribe([self.config.events_topic], listener=_SeekToStoredPositions(self))
        await consumer.start()
        try:
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
            self._sought[tp.partition] = positions.get(tp.partition, 0)
            consumer.seek(tp, self._sought[tp.partition])

    async def apply_batch(self, consumer: AIOKafkaConsumer, tp: TopicPartition, records: list[Any]) -> None:
        """Apply one partition's batch and its new position in one transaction."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT next_offset FROM projection_positions WHERE projection = %s AND topic = %s"
                " AND partition = %s FOR UPDATE",
                (self.config.projection, self.config.events_topic, tp.partition),
            )
            row = await cur.fetchone()
            stored = row[0] if row else 0
            if records[0].offset > stored and self._sought.get(tp.partition) != stored:
                # Either the table was rewound (a rebuild) or the gap is only transaction markers,
                # which take offsets too. Read again from the stored position once to find out.
                log.info("partition %s: stored position %s is before the batch; reading from it", tp.partition, stored)
                consumer.seek(tp, stored)
                self._sought[tp.partition] = stored
                return
            fresh = [r for r in records if r.offset >= stored]
            if not fresh:
                return
            changes = await self.apply_records(conn, fresh)
            next_offset = fresh[-1].offset + 1
            await conn.execute(
                "INSERT INTO projection_positions (projection, topic, partition, next_offset) VALUES (%s,%s,%s,%s)"
                " ON CONFLICT (projection, topic, partition) DO UPDATE SET next_offset = excluded.next_offset,"
                " updated_at = now()",
                (self.config.projection, self.config.events_topic, tp.partition, next_offset),
            )
            # Delivered by PostgreSQL only when this transaction commits.
            await conn.execute(
                "SELECT pg_notify(%s, %s)",
                (
                    self.config.channel,
                    change_payload(self.config.projection, tp.partition, next_offset, changes),
                ),
            )

    async def apply_records(self, conn: AsyncConnection[Any], records: list[Any]) -> list[dict[str, Any]]:
        """Apply decoded events in order, each at most once per aggregate version; return what changed."""
        events: list[EventRecord] = []
        for record in records:
            try:
                events.append(EventRecord.from_kafka(record, self.mapper))
            except (KeyError, ValueError, TypeError) as exc:
                await self._dead_letter(conn, record, f"undecodable event: {exc}")
        ids = list({e.aggregate_id for e in events})
        cur = await conn.execute(
            "SELECT aggregate_id::text, version FROM aggregate_versions WHERE aggregate_id = ANY(%s::uuid[])",
            (ids,),
        )
        versions: dict[str, int] = dict(await cur.fetchall())
        changed: dict[str, int] = {}
        changes: list[dict[str, Any]] = []
        async with conn.pipeline(), conn.cursor() as cursor:
            for event in events:
                current = versions.get(event.aggregate_id, 0)
                if event.version <= current:
                    continue  # applied before: exactly once even if Kafka redelivers
                if event.version != current + 1:
                    await self._dead_letter(conn, event, f"version gap: at {current}, got {event.version}")
                    continue
                for projector in self.projectors:
                    await projector.apply(cursor, event)
                versions[event.aggregate_id] = changed[event.aggregate_id] = event.version
                changes.append({"id": event.aggregate_id, "type": event.type, "version": event.version})
            if changed:
                await cursor.executemany(
                    "INSERT INTO aggregate_versions (aggregate_id, version) VALUES (%s, %s)"
                    " ON CONFLICT (aggregate_id) DO UPDATE SET version = excluded.version",
                    list(changed.items()),
                )
        return changes

    async def _dead_letter(self, conn: AsyncConnection[Any], record: Any, reason: str) -> None:
        log.error("event at %s:%s not applied: %s", record.partition, record.offset, reason)
        await conn.execute(
            "INSERT INTO projection_dead_letters (topic_partition, topic_offset, reason) VALUES (%s, %s, %s)",
            (record.partition, record.offset, reason),
        )


class _SeekToStoredPositions(ConsumerRebalanceListener):
    def __init__(self, runner: ProjectionRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.runner._lock:  # let the batch in flight finish first
            pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self.runner.consumer is not None and assigned:
            await self.runner.seek_to_stored(self.runner.consumer, assigned)
