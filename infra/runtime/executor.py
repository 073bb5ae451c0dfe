"""Wiring of the graph executor: its command bus, blob store and read-model lookups."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from aiokafka import AIOKafkaConsumer, TopicPartition
from psycopg_pool import AsyncConnectionPool

from commands.envelope import Actor
from commands.execution_run import RunDeps
from commands.executor import Executor, ExecutorConfig
from domain.nodes.catalog import MAX_INPUT_BYTES, NodeError
from infra.adapters.blobstore import BlobNotFound, LocalBlobStore, object_content
from infra.adapters.codec import make_mapper
from infra.adapters.command_bus import KafkaCommandBus
from infra.adapters.kafka import ensure_topics, topic_partitions
from infra.adapters.postgres import migrate, open_pool
from infra.runtime.settings import Settings
from projections.data_objects import get_data_object
from projections.search import SearchRequest
from projections.search import search as search_objects


@dataclass
class ExecutorService:
    executor: Executor
    bus: KafkaCommandBus
    pool: AsyncConnectionPool
    offsets: AIOKafkaConsumer

    async def run(self, stop: asyncio.Event) -> None:
        """Run the executor until ``stop`` is set, then close its clients."""
        try:
            await self.executor.run(stop)
        finally:
            await self.bus.stop()
            await self.offsets.stop()
            await self.pool.close()


def blob_hash(location: str) -> str:
    """The sha256 of a ``blob://sha256/<hash>`` location."""
    return location.rsplit("/", 1)[-1]


async def build_executor(settings: Settings) -> ExecutorService:
    """The executor with everything it needs connected (topics and schema created if missing)."""
    topics = await ensure_topics(settings.kafka)
    await migrate(settings.database.url, settings.database.schema)
    pool = await open_pool(settings.database.url, settings.database.schema, 1, 4)
    bus = KafkaCommandBus.from_settings(settings.kafka, topics)
    await bus.start()
    blobs = LocalBlobStore(settings.storage.blob_path)
    # Only asks for end offsets: no group, never fetches.
    offsets = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, isolation_level="read_committed")
    await offsets.start()
    partitions = [
        TopicPartition(topics.events, p)
        for p in await topic_partitions(settings.kafka.bootstrap_servers, topics.events)
    ]

    async def read_models_caught_up() -> bool:
        """Has the projection applied every event committed so far?"""
        ends = await offsets.end_offsets(partitions)
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT partition, next_offset FROM projection_positions WHERE projection = %s AND topic = %s",
                (settings.kafka.projection_name, topics.events),
            )
            stored: dict[int, int] = {partition: offset for partition, offset in await cur.fetchall()}
        # A committed transaction ends with its marker, an offset no projection applies.
        return all(stored.get(tp.partition, 0) >= end - 1 for tp, end in ends.items() if end > 0)

    async def load_object(actor: Actor, object_id: str) -> str:
        # Read-your-writes for graphs: an object ingested just before the graph was submitted may not
        # be in the read model yet (nodes now start within milliseconds of Submitted). "Does not
        # exist" only once the projection has caught up, or after the consistency wait.
        deadline = time.monotonic() + settings.consistency.wait_timeout_seconds
        async with pool.connection() as conn:
            row = await get_data_object(conn, object_id, with_content=True)
        while row is None and time.monotonic() < deadline:
            # Caught up first, then read: a row missing after that is missing for good.
            caught_up = await read_models_caught_up()
            async with pool.connection() as conn:
                row = await get_data_object(conn, object_id, with_content=True)
            if caught_up:
                break
            await asyncio.sleep(0.02)
        # The visibility rule, as the submitter: someone else's object does not exist for this graph
        # (unless the submitter acts as an admin).
        if row is None or (actor.role != "admin" and row["owner"] != actor.user_id):
            raise NodeError(f"data object {object_id} does not exist")
        if row["size"] > MAX_INPUT_BYTES:
            raise NodeError(f"data object {object_id} is larger than {MAX_INPUT_BYTES} bytes")
        try:
            data = await asyncio.to_thread(object_content, blobs, row)
        except BlobNotFound as exc:
            raise NodeError(f"the content of {object_id} is missing") from exc
        return data.decode("utf-8", errors="replace")

    async def search(actor: Actor, query: str, limit: int) -> list[dict[str, Any]]:
        """The search REST and GraphQL run (projections.search), as the submitter sees objects."""
        request = SearchRequest(
            query=query,
            limit=limit,
            owner_scope=None if actor.role == "admin" else actor.user_id,
            language=settings.search.language,
        )
        async with pool.connection() as conn:
            rows, _ = await search_objects(conn, request)
        return [_node_result(row) for row in rows]

    async def lookup_user(user_id: str) -> tuple[str, bool] | None:
        """The submitter's current (role, disabled), read at each effect: one primary-key lookup."""
        try:
            UUID(user_id)
        except ValueError:
            return None
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT role, disabled FROM users WHERE user_id = %s", (user_id,))
            row = await cur.fetchone()
        return (str(row[0]), bool(row[1])) if row else None

    s = settings.execution
    deps = RunDeps(
        submit=bus.submit,
        put_blob=lambda data: blobs.put(data).location,
        get_blob=lambda location: blobs.get(blob_hash(location)),
        load_object=load_object,
        search=search,
        lookup_user=lookup_user,
        node_timeout=s.node_timeout_seconds,
        inline_output_bytes=s.inline_output_bytes,
        record_linger=s.record_linger_ms / 1000,
        event_content_bytes=settings.storage.event_content_bytes,
    )
    config = ExecutorConfig(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        events_topic=topics.events,
        group_id=f"{settings.kafka.topic_prefix}.{s.executor_group}",
        max_running=s.max_running,
        fetch_max_wait_ms=settings.kafka.event_fetch_max_wait_ms,
    )
    return ExecutorService(Executor(config, make_mapper(), deps), bus, pool, offsets)


def _node_result(row: dict[str, Any]) -> dict[str, Any]:
    """A search hit as the `search` node outputs it: JSON values only (times as ISO text)."""
    keep = ("object_id", "object_type", "content_type", "size", "metadata", "score", "snippet")
    result = {key: row[key] for key in keep}
    result["created_at"] = row["created_at"].isoformat()
    result["annotations"] = [{**a, "created_at": a["created_at"].isoformat()} for a in row["annotations"]]
    return result
