"""Event streams from any position: catch up from the audit log, then follow it live.

One stream (``follow``) serves the GraphQL ``events`` subscription, the ``events`` topic of /ws
and ``GET /api/v1/events/stream`` (SSE). Positions and visibility: projections/event_stream.py.

Live events come from the hub (api/hub.py): after each committed projection batch it reads the
new audit rows once (``EventStreams.advance``: per partition, from where it last read to the
change feed's position) and offers each to every open stream that wants it, into the stream's
bounded buffer. No second listener: the hub already hears every commit.

The switch from catch-up to live: a stream first registers with the hub (so its buffer fills from
that moment), then reads the log in pages after its position until every partition is exhausted,
then drains the buffer, skipping what the pages already delivered. Everything the hub had read
before the registration was committed before it, so the pages see it; everything after is in the
buffer; the per-partition offsets tell the two apart. If the buffer overflows while the stream is
still catching up, it is emptied and the catch-up simply goes on (what it dropped is in the log).

Slow consumers: a stream that is live and whose buffer overflows (``event_stream.buffer_events`` /
``buffer_bytes``) drops it and ends with a ``Lagged`` item carrying the position of the last event
it delivered; a client resumes from there without losing or repeating anything.

Rights are re-checked (``check``, api/live_rights.py) before every page and every live delivery;
a user demoted since is filtered by their new role, a disabled one ends the stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg_pool import AsyncConnectionPool

from api.audit_service import may_read
from api.rbac import Role, can_see
from commands.envelope import Actor
from infra.runtime.bootstrap import ApiContainer
from infra.runtime.metrics import EVENT_STREAM_OVERFLOWS
from infra.runtime.settings import EventStreamSettings
from projections.audit_log import creation_row
from projections.changes import ChangeFeed
from projections.event_stream import (
    StreamFilter,
    expand_types,
    format_position,
    parse_position,
    read_after,
    read_range,
    to_event,
)

log = logging.getLogger("pipeline.events")
MAX_POSITION_CHARS = 30_000
Check = Callable[[bool], Awaitable[Actor]]  # re-check the caller (fresh: bypass the cache); raises to end


@dataclass(frozen=True)
class StreamRequest:
    after: dict[int, int] | None  # None: "now", only events after the current end
    filter: StreamFilter


def stream_request(after: Any, types: Any, aggregate_id: Any, settings: EventStreamSettings) -> StreamRequest:
    """Check a stream's parameters, from any entry point; ValueError names what is wrong."""
    if after is not None and not isinstance(after, str | int):
        raise ValueError("'after' is a position ('<partition>:<offset>,...'), 'now', or absent for the beginning")
    text = "" if after is None else str(after)
    if len(text) > MAX_POSITION_CHARS:
        raise ValueError(f"'after' is at most {MAX_POSITION_CHARS} characters")
    vector = None if text.strip() == "now" else parse_position(text)
    wanted = None
    if types is not None:
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            raise ValueError("'types' is a list of event types (DataObject.Ingested) or aggregate types (Execution)")
        if not 1 <= len(types) <= settings.max_types:
            raise ValueError(f"'types' names 1..{settings.max_types} types")
        try:
            wanted = expand_types(types)
        except ValueError as exc:  # named, so entry points say which parameter is wrong
            raise ValueError(f"'types': {exc}") from exc
    if aggregate_id is not None:
        if not isinstance(aggregate_id, str):
            raise ValueError("'aggregate_id' is a UUID")
        try:
            aggregate_id = str(UUID(aggregate_id))
        except ValueError as exc:
            raise ValueError("'aggregate_id' is a UUID") from exc
    return StreamRequest(vector, StreamFilter(wanted, aggregate_id))


async def refuse_unreachable(request: StreamRequest, events_end: Callable[[int], Awaitable[int | None]]) -> None:
    """ValueError for a position the log cannot have given: a partition the events topic lacks, or an
    offset at or past a partition's end (the stream would silently skip every event up to it).

    ``events_end`` is the command bus's; partitions are checked in order, so a made-up vector costs
    at most one metadata look-up per real partition. A broker that does not answer leaves the stream to wait.
    """
    for partition, offset in sorted((request.after or {}).items()):
        try:
            end = await events_end(partition)
        except Exception:  # broker unreachable or slow: nothing to refuse with
            return
        if end is None:
            raise ValueError(f"not a position: the events topic has no partition {partition}")
        if offset >= end:
            raise ValueError(f"not a position: partition {partition} has no event at offset {offset} yet")


class HiddenAggregate(LookupError):
    """The stream names an aggregate the caller may not see (or none): 404, as reading it would be."""


async def refuse_hidden(request: StreamRequest, actor: Actor, container: ApiContainer) -> None:
    """HiddenAggregate when a non-admin filters the stream to an aggregate that is not theirs, as
    ``GET /api/v1/audit/{id}`` decides it (its first event's owner): a stream of someone else's object
    would otherwise answer an empty 200 where the object answers 404, telling that it exists.

    An aggregate with no event in the read models yet (a write the projection has not applied) is
    waited for, until the read models reach the log's current end (at most
    ``consistency.wait_timeout_seconds``), so a client that subscribes right after its own write is
    not refused.
    """
    aggregate_id = request.filter.aggregate_id
    if aggregate_id is None or actor.role == Role.ADMIN:
        return
    creation = await _creation(container.pool, aggregate_id)
    if creation is None:
        await _catch_up(container, container.settings.consistency.wait_timeout_seconds)
        creation = await _creation(container.pool, aggregate_id)
    if not may_read(actor, aggregate_id, creation):
        raise HiddenAggregate(f"aggregate {aggregate_id} does not exist")


async def _creation(pool: AsyncConnectionPool, aggregate_id: str) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        return await creation_row(conn, aggregate_id)


async def _catch_up(container: ApiContainer, seconds: float) -> None:
    """Wait (bounded) until the read models have applied every event the log holds now."""
    feed = container.changes
    deadline = asyncio.get_running_loop().time() + seconds
    for partition in sorted(set(feed.positions) | set(range(container.settings.kafka.partitions))):
        try:
            end = await container.bus.events_end(partition)
        except Exception:  # broker unreachable: nothing to wait for
            return
        left = deadline - asyncio.get_running_loop().time()
        # The processor writes events in transactions, so the log ends with a commit marker, which
        # takes an offset the read models never record (their position is the last event's + 1):
        # caught up is a position of end - 1 or more, i.e. the event at end - 2 applied.
        if end and end > 1 and left > 0 and not await feed.wait_for(partition, end - 2, left):
            return


@dataclass(frozen=True)
class Lagged:
    position: str


def visible(actor: Actor, row: dict[str, Any]) -> bool:
    return actor.role == Role.ADMIN or (row["owner"] is not None and can_see(actor.role, actor.user_id, row["owner"]))


class EventStream:
    """One stream's live buffer, filled by the hub, bounded in events and bytes."""

    def __init__(self, actor: Actor, stream_filter: StreamFilter, settings: EventStreamSettings) -> None:
        self.actor = actor
        self.filter = stream_filter
        self.settings = settings
        self.rows: deque[dict[str, Any]] = deque()
        self.bytes = 0
        self.overflowed = False
        self.fresh = False  # a delivery since the last check may have changed the caller
        self._ready = asyncio.Event()

    def offer(self, rows: list[dict[str, Any]], fresh: bool) -> bool:
        """Buffer the rows this stream wants; True if that overflowed the buffer (it is then emptied)."""
        self.fresh = self.fresh or fresh
        if self.overflowed:
            return False
        for row in rows:
            if self.filter.matches(row) and visible(self.actor, row):
                self.rows.append(row)
                self.bytes += len(row["payload"])
        if len(self.rows) > self.settings.buffer_events or self.bytes > self.settings.buffer_bytes:
            self.overflowed = True
            self.rows.clear()
            self.bytes = 0
        if self.rows or self.overflowed or fresh:
            self._ready.set()
        return self.overflowed

    def reset(self) -> None:
        """Forget an overflow during catch-up: the dropped rows are in the log, which is read next."""
        self.overflowed = False

    async def take(self) -> list[dict[str, Any]] | None:
        """The buffered rows (waiting for some); None once it has overflowed."""
        while not self.rows and not self.overflowed:
            self._ready.clear()
            await self._ready.wait()
            if self.fresh:
                break  # let the caller re-check even with nothing to deliver
        if self.overflowed:
            return None
        rows = list(self.rows)
        self.rows.clear()
        self.bytes = 0
        return rows


class EventStreams:
    """The hub's part: where it has read the audit log to, and the open streams it feeds."""

    def __init__(self, feed: ChangeFeed, pool: AsyncConnectionPool, settings: EventStreamSettings) -> None:
        self.feed = feed
        self.pool = pool
        self.settings = settings
        self.frontier: dict[int, int] = {}  # partition -> next offset not yet read
        self.streams: set[EventStream] = set()

    def start_at(self, positions: dict[int, int]) -> None:
        """Called when the hub starts listening: everything before ``positions`` is committed already."""
        self.frontier = dict(positions)

    def open(self, actor: Actor, stream_filter: StreamFilter) -> EventStream:
        stream = EventStream(actor, stream_filter, self.settings)
        self.streams.add(stream)
        return stream

    def close(self, stream: EventStream) -> None:
        self.streams.discard(stream)

    def partitions(self) -> set[int]:
        return set(self.feed.positions) | set(self.frontier)

    def now(self) -> dict[int, int]:
        """The position just before the next event to be committed (as far as this process has heard)."""
        return {partition: offset - 1 for partition, offset in self.feed.positions.items() if offset > 0}

    async def advance(self, fresh_users: set[str], truncated: bool) -> None:
        """Read what was committed since the last call and offer it to the streams (the hub calls it)."""
        behind = {p: end for p, end in self.feed.positions.items() if end > self.frontier.get(p, 0)}
        if not self.streams:
            self.frontier.update(behind)
            return
        for partition, end in sorted(behind.items()):
            start = self.frontier.get(partition, 0)
            while start < end:
                try:
                    async with self.pool.connection() as conn:
                        rows = await read_range(conn, partition, start, end, self.settings.page_size)
                except Exception:  # the frontier stays: the next batch reads this range again (the hub lives on)
                    log.exception("cannot read new events of partition %s; retried with the next change", partition)
                    return
                start = rows[-1]["topic_offset"] + 1 if len(rows) == self.settings.page_size else end
                self.frontier[partition] = start
                for stream in list(self.streams):
                    if stream.offer(rows, truncated or stream.actor.user_id in fresh_users):
                        EVENT_STREAM_OVERFLOWS.inc()


async def follow(
    streams: EventStreams, request: StreamRequest, actor: Actor, check: Check
) -> AsyncIterator[tuple[str, dict[str, Any]] | Lagged]:
    """(position, event) for every visible event after ``request.after``, then live; maybe a final Lagged."""
    stream = streams.open(actor, request.filter)  # first: its buffer fills while the log is read
    vector = streams.now() if request.after is None else dict(request.after)
    settings = streams.settings
    try:
        while True:  # catch-up, partition by partition
            pending = streams.partitions() | set(vector)
            while pending:
                stream.actor = actor = await check(_take_fresh(stream))
                owner = None if actor.role == Role.ADMIN else actor.user_id
                after = {p: vector.get(p, -1) for p in sorted(pending)}
                async with streams.pool.connection() as conn:
                    rows = await read_after(conn, after, request.filter, owner, settings.page_size)
                counts: dict[int, int] = {}
                for row in rows:
                    partition = row["topic_partition"]
                    counts[partition] = counts.get(partition, 0) + 1
                    vector[partition] = row["topic_offset"]
                    yield format_position(vector), to_event(row)
                pending = {p for p in pending if counts.get(p, 0) >= settings.page_size}
            if not stream.overflowed:
                break
            stream.reset()  # what the buffer dropped is in the log: read on
        while True:  # live
            live = await stream.take()
            if live is None:
                yield Lagged(format_position(vector))
                return
            stream.actor = actor = await check(_take_fresh(stream))
            for row in live:
                partition = row["topic_partition"]
                if row["topic_offset"] <= vector.get(partition, -1) or not visible(actor, row):
                    continue  # delivered by the catch-up, or no longer visible to a demoted caller
                vector[partition] = row["topic_offset"]
                yield format_position(vector), to_event(row)
    finally:
        streams.close(stream)


def _take_fresh(stream: EventStream) -> bool:
    fresh, stream.fresh = stream.fresh, False
    return fresh
