"""The live change feed: what the runner announces after each commit, and who listens.

The runner calls ``pg_notify`` inside its transaction, so PostgreSQL delivers the message exactly
when the batch is visible. Each API process keeps one listening connection (``ChangeFeed``): it
tracks how far the read models have got, for read-your-writes waits, and fans changes out to
in-process subscribers (bounded queues; a slow subscriber loses what is queued and is told, by a
``missed`` message, as after a reconnection).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import psycopg

from commands.tasks import cancel_and_wait

MAX_PAYLOAD = 7000  # PostgreSQL refuses NOTIFY payloads of 8000 bytes or more
log = logging.getLogger("pipeline.changes")


def change_payloads(projection: str, partition: int, next_offset: int, changes: list[dict[str, Any]]) -> list[str]:
    """The NOTIFY payloads for one committed batch: its changes in order, as many payloads as fit.

    PostgreSQL delivers a transaction's notifications together once it commits; each part carries the
    batch's position and stands alone (a receiver may take the parts as batches of their own). A batch of a few
    hundred changes (a projection catching up, 32 executions finishing at once) does not fit in one: cut
    to fit, the rest were lost to live clients (an execution followed on /ws never said "completed").
    Only a single change too large for a payload on its own is still left out, and the part says so
    (``truncated``).
    """
    head = orjson.dumps({"projection": projection, "partition": partition, "next_offset": next_offset})[:-1]
    encoded = [orjson.dumps(change) for change in changes]
    room = MAX_PAYLOAD - len(head) - len(b',"changes":[],"truncated":true}')
    payloads: list[str] = []
    part: list[bytes] = []
    size, truncated = 0, False
    for change in encoded:
        if len(change) > room:
            truncated = True
            continue
        if part and size + len(change) + 1 > room:
            payloads.append(_payload(head, part, truncated))
            part, size, truncated = [], 0, False
        part.append(change)
        size += len(change) + 1
    if part or truncated or not payloads:
        payloads.append(_payload(head, part, truncated))
    return payloads


def _payload(head: bytes, changes: list[bytes], truncated: bool) -> str:
    tail = b',"truncated":true}' if truncated else b"}"
    return (head + b',"changes":[' + b",".join(changes) + b"]" + tail).decode()


def channel_for(schema: str) -> str:
    """One channel per schema, so deployments and tests sharing a database do not hear each other."""
    return f"pipeline_changes.{schema}"


def feed_application_name(schema: str) -> str:
    """How the LISTEN connection names itself to PostgreSQL (pg_stat_activity; at most 63 bytes)."""
    return f"pipeline change feed {schema}"[:63]


class ChangeFeed:
    """One LISTEN connection per process: read-model positions and a fan-out of changes."""

    def __init__(self, url: str, schema: str, projection: str, topic: str, queue_size: int = 1000) -> None:
        self.url = url
        self.schema = schema
        self.projection = projection
        self.topic = topic
        self.positions: dict[int, int] = {}
        self.connected = False
        self.generation = 0  # counts (re)connections
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._advanced = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        """Start listening; returns once the first connection is up and positions are loaded."""
        self._task = asyncio.create_task(self._listen_forever())
        await asyncio.wait_for(self._ready.wait(), timeout=30)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def reached(self, partition: int, offset: int) -> bool:
        """Has the read model applied the event at ``partition:offset``?"""
        return self.positions.get(partition, 0) > offset

    async def wait_for(self, partition: int, offset: int, timeout: float) -> bool:
        """Wait (bounded) until the event at ``partition:offset`` is visible in the read models."""
        if self.reached(partition, offset):
            return True
        try:
            async with self._advanced:
                await asyncio.wait_for(self._advanced.wait_for(lambda: self.reached(partition, offset)), timeout)
            return True
        except TimeoutError:
            return self.reached(partition, offset)

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A bounded queue of change messages; when full, the oldest message is dropped."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)

    async def _listen_forever(self) -> None:
        delay = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, application_name=feed_application_name(self.schema)
                ) as conn:
                    await conn.execute(f'LISTEN "{channel_for(self.schema)}"')
                    await self._load_positions(conn)
                    self.connected, delay = True, 0.2
                    self.generation += 1  # listeners holding derived state know to drop it
                    self._ready.set()
                    if self.generation > 1:  # NOTIFYs sent while it was down are gone: say so
                        self._fan_out(self.missed_message("the change feed reconnected"))
                    async for notify in conn.notifies():
                        await self._on_message(orjson.loads(notify.payload))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect: positions are reloaded, nothing is lost for waiters
                self.connected = False
                log.warning("change feed connection lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _load_positions(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cur = await conn.execute(
            f'SELECT partition, next_offset FROM "{self.schema}".projection_positions'
            " WHERE projection = %s AND topic = %s",
            (self.projection, self.topic),
        )
        async with self._advanced:
            for partition, offset in await cur.fetchall():
                self.positions[partition] = max(self.positions.get(partition, 0), offset)
            self._advanced.notify_all()

    async def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("projection") != self.projection:
            return
        async with self._advanced:
            partition = message["partition"]
            self.positions[partition] = max(self.positions.get(partition, 0), message["next_offset"])
            self._advanced.notify_all()
        self._fan_out(message)

    def missed_message(self, why: str) -> dict[str, Any]:
        """What a subscriber gets where changes went by unseen: after a reconnection (the changes
        committed while the feed was down were announced to nobody) or when its queue overflowed.
        ``truncated`` (like a batch too large to list) tells it to drop what it derived from changes;
        the hub tells live clients to re-read (``resync``); read positions are reloaded on reconnection,
        so waits for a token and event streams (which read the log by position) lose nothing."""
        return {"projection": self.projection, "missed": why, "truncated": True, "changes": []}

    def _fan_out(self, message: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            if queue.full():  # a subscriber this far behind: what it lost is replaced by one marker
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(self.missed_message("a subscriber fell behind the change feed"))
            queue.put_nowait(message)
