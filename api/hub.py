"""The live hub: one per API process, fanning committed changes out to WebSocket topics.

It reads the process's change feed (PostgreSQL NOTIFY after each projection commit) and turns each
change into messages on topics: ``data_changes`` for data objects, ``execution:{id}`` for
executions. Every connection has a bounded queue; when a slow client's queue is full its oldest
message is dropped and it is told how many it lost (``{"type": "lagged", "dropped": n}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, defaultdict
from typing import Any

from psycopg_pool import AsyncConnectionPool

from commands.envelope import Actor
from projections.changes import ChangeFeed

log = logging.getLogger("pipeline.hub")
OWNER_CACHE_SIZE = 100_000


class Subscriber:
    """One connection's subscriptions, who it is, and its bounded outbox."""

    def __init__(self, queue_size: int, actor: Actor) -> None:
        self.actor = actor
        self.topics: set[str] = set()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(queue_size)
        self.dropped = 0

    def offer(self, message: dict[str, Any]) -> None:
        if self.outbox.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.outbox.get_nowait()
            self.dropped += 1
        self.outbox.put_nowait(message)


def messages_for(change: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(topic, message) pairs for one committed change."""
    aggregate, _, kind = change["type"].partition(".")
    if aggregate == "DataObject":
        message = {
            "type": "data_change",
            "owner": change.get("owner"),
            "object_id": change["id"],
            "change_type": kind,
            "data": {"version": change["version"]},
        }
        return [("data_changes", message)]
    if aggregate == "Execution":
        data = {"event": kind, "version": change["version"]}
        return [(f"execution:{change['id']}", {"type": "execution_update", "execution_id": change["id"], "data": data})]
    return []


class LiveHub:
    def __init__(self, feed: ChangeFeed, pool: AsyncConnectionPool, queue_size: int = 256) -> None:
        self.feed = feed
        self.pool = pool
        # object id -> owner, so data changes reach only those who may see the object (even deleted).
        self._owners: OrderedDict[str, str] = OrderedDict()
        self.queue_size = queue_size
        self._by_topic: dict[str, set[Subscriber]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.connections = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._pump())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def connect(self, actor: Actor) -> Subscriber:
        self.connections += 1
        return Subscriber(self.queue_size, actor)

    def disconnect(self, subscriber: Subscriber) -> None:
        self.connections -= 1
        for topic in list(subscriber.topics):
            self.unsubscribe(subscriber, topic)

    def subscribe(self, subscriber: Subscriber, topic: str) -> None:
        subscriber.topics.add(topic)
        self._by_topic[topic].add(subscriber)

    def unsubscribe(self, subscriber: Subscriber, topic: str) -> None:
        subscriber.topics.discard(topic)
        members = self._by_topic.get(topic)
        if members is not None:
            members.discard(subscriber)
            if not members:
                del self._by_topic[topic]

    def publish(self, topic: str, message: dict[str, Any]) -> None:
        owner = message.pop("owner", None)
        for subscriber in list(self._by_topic.get(topic, ())):
            actor = subscriber.actor
            if topic == "data_changes" and not (actor.role == "admin" or (owner and owner == actor.user_id)):
                continue
            subscriber.offer({**message, "topic": topic})

    async def _learn_owners(self, changes: list[dict[str, Any]]) -> None:
        unknown = list(
            {c["id"] for c in changes if c["type"].startswith("DataObject.") and c["id"] not in self._owners}
        )
        if unknown:
            try:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(
                        "SELECT object_id::text, owner FROM data_objects WHERE object_id = ANY(%s::uuid[])", (unknown,)
                    )
                    rows = await cur.fetchall()
            except Exception:
                log.exception("owner lookup failed; those changes go to admins only")
                rows = []
            for object_id, owner in rows:
                self._owners[object_id] = owner
        while len(self._owners) > OWNER_CACHE_SIZE:
            self._owners.popitem(last=False)

    async def _pump(self) -> None:
        queue = self.feed.subscribe()
        try:
            while True:
                batch = await queue.get()
                if self._by_topic.get("data_changes"):  # owners matter only to data_changes subscribers
                    await self._learn_owners(batch.get("changes", []))
                for change in batch.get("changes", []):
                    change = {**change, "owner": self._owners.get(change["id"])}
                    for topic, message in messages_for(change):
                        self.publish(topic, message)
        finally:
            self.feed.unsubscribe(queue)
