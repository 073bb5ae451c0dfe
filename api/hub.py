"""The live hub: one per API process, fanning committed changes out to WebSocket topics.

It reads the process's change feed (PostgreSQL NOTIFY after each projection commit) and turns each
change into messages on topics: ``data_changes`` for data objects, ``execution:{id}`` for
executions, and ``{"type": "notification", "data": ...}`` to every open connection of the user a
notification is for (projections/notifications.py), without any subscription. Every connection
has a bounded queue; when a slow client's queue is full its oldest message is dropped and it is
told how many it lost (``{"type": "lagged", "dropped": n}``); when the change feed reconnects, every
connection is told it may have missed changes (``{"type": "resync"}``). The same batches advance the event
streams (api/event_streams.py): the hub reads each batch's new audit rows once for all of them.

Rights are re-checked for every delivery (api/live_rights.py): before a batch goes out, each
receiving connection's user is looked up again (the user cache; fresh when the batch changes that
user). A disabled user's connections are closed with 1008 and get nothing more; a demoted user's
role applies to the same batch, and an ``execution:{id}`` topic they may no longer see is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, defaultdict
from typing import Any

import msgspec
import orjson
from opentelemetry.trace import Tracer
from psycopg import Error as PostgresError
from psycopg_pool import AsyncConnectionPool

from api.event_streams import EventStreams
from api.live_rights import POLICY_VIOLATION, changed_users, current_row, token_revoked
from api.rbac import can_see
from api.rest.executions import to_status
from api.revocations import RevokedTokens
from api.user_cache import UserCache
from commands.envelope import Actor
from commands.tasks import cancel_and_wait
from commands.tracing import parent_context
from infra.runtime.metrics import WEBSOCKET_DROPPED
from projections.changes import ChangeFeed
from projections.executions import get_executions
from projections.notifications import NOTIFYING, notifications_caused_by

log = logging.getLogger("pipeline.hub")
OWNER_CACHE_SIZE = 100_000


class Subscriber:
    """One connection's subscriptions, who it is, and its bounded outbox."""

    def __init__(self, queue_size: int, actor: Actor, token_generation: int = 0, token_id: str = "") -> None:
        self.actor = actor
        self.token_generation = token_generation  # of the token that opened it: a password change ends it
        self.token_id = token_id  # the jti of that token: its revocation (logout) ends it
        self.topics: set[str] = set()
        self.owners: dict[str, str] = {}  # execution topic -> its submitter, checked on each delivery
        # A topic being joined holds its messages until the current state is sent (LiveHub.release);
        # afterwards only messages newer than that state's version go out (no duplicates, no gaps).
        self.held: dict[str, list[dict[str, Any]]] = {}
        self.floors: dict[str, int] = {}
        # dicts, or JSON text already encoded once for every receiver of a published change
        self.outbox: asyncio.Queue[dict[str, Any] | str] = asyncio.Queue(queue_size)
        # The connection's event stream (the ``events`` topic) writes here and waits when it is full:
        # its messages are never dropped (a stream that falls behind ends with its own ``lagged``).
        self.stream_outbox: asyncio.Queue[dict[str, Any] | str] = asyncio.Queue(queue_size)
        self.stream_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.dropped = 0
        self.closed: tuple[int, str] | None = None  # (close code, reason) once the hub ends it

    def offer(self, message: dict[str, Any] | str) -> None:
        if self.closed is not None:
            return
        if self.outbox.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.outbox.get_nowait()
            self.dropped += 1
            WEBSOCKET_DROPPED.inc()
        self.outbox.put_nowait(message)
        self._wake.set()

    async def put_stream(self, message: dict[str, Any] | str) -> None:
        """Queue an event-stream message, waiting while the client is behind (back-pressure)."""
        await self.stream_outbox.put(message)
        self._wake.set()

    async def next_message(self) -> dict[str, Any] | str:
        """The next message to send: the outbox first (it carries the close marker), then the stream's."""
        while True:
            if not self.outbox.empty():
                return self.outbox.get_nowait()
            if not self.stream_outbox.empty():
                return self.stream_outbox.get_nowait()
            self._wake.clear()
            await self._wake.wait()

    def close(self, code: int, reason: str) -> None:
        """End the connection: nothing queued is sent any more; the send loop closes the socket."""
        if self.closed is not None:
            return
        self.closed = (code, reason)
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.outbox.put_nowait(CLOSE)
        self._wake.set()


CLOSE: dict[str, Any] = {"type": "close"}  # the outbox marker the send loop stops at (compared by identity)


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


FINISHED = frozenset({"completed", "failed", "cancelled"})


def status_at(state: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """An ``execution_update``'s data: the execution's status read now (``state``) with the update's event
    name and version. Read after later events, it may be ahead of the update, except that it is never
    finished before the last event: a finishing event is an execution's last, so an update older than the
    status says ``running`` (or ``submitted``), and a client that stops at a finished status has had
    every update."""
    data = {**state, **update}
    if update["version"] < state["version"] and state["status"] in FINISHED:
        data.update(status="running" if state["started_at"] else "submitted", completed_at=None)
    return data


def resync_message(topics: set[str]) -> dict[str, Any]:
    """Told to every connection when the hub missed changes (projections/changes.py: the change feed
    reconnected, or the hub fell more than a queue behind it): changes and
    notifications committed while it was down were not delivered, so the client re-reads what it shows.
    The connection's event stream is not affected (it reads the log by position: nothing is lost)."""
    return {
        "type": "resync",
        "topics": sorted(topics),
        "message": "the live feed was interrupted; changes and notifications since your last message may have"
        " been missed: re-read the objects and executions you follow and GET /api/v1/notifications",
    }


def notification_message(row: dict[str, Any]) -> dict[str, Any]:
    """A notification row as JSON for a live message (the REST list's shape)."""
    return {
        "notification_id": row["notification_id"],
        "kind": row["kind"],
        "message": row["message"],
        "data": row["data"],
        "created_at": row["created_at"].isoformat(),
        "read_at": None,
    }


class LiveHub:
    def __init__(
        self,
        feed: ChangeFeed,
        pool: AsyncConnectionPool,
        users: UserCache,
        events: EventStreams,
        queue_size: int = 256,
        tracer: Tracer | None = None,
        revocations: RevokedTokens | None = None,
    ) -> None:
        self.feed = feed
        self.revocations = revocations  # logouts: a connection opened with a revoked token is closed
        self.events = events
        self.tracer = tracer  # None: tracing off (infra.runtime.tracing)
        self.pool = pool
        self.users = users
        self._subscribers: set[Subscriber] = set()
        # object id -> owner, so data changes reach only those who may see the object (even deleted).
        self._owners: OrderedDict[str, str] = OrderedDict()
        self.queue_size = queue_size
        self._by_topic: dict[str, set[Subscriber]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.connections = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._pump())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def connect(self, actor: Actor, token_generation: int = 0, token_id: str = "") -> Subscriber:
        self.connections += 1
        subscriber = Subscriber(self.queue_size, actor, token_generation, token_id)
        self._subscribers.add(subscriber)
        return subscriber

    def disconnect(self, subscriber: Subscriber) -> None:
        if subscriber not in self._subscribers:
            return
        self._subscribers.discard(subscriber)
        self.connections -= 1
        for topic in list(subscriber.topics):
            self.unsubscribe(subscriber, topic)

    def subscribe(self, subscriber: Subscriber, topic: str, owner: str | None = None, hold: bool = False) -> None:
        """Add a topic; ``owner`` is an execution topic's submitter (visibility is re-checked per delivery).

        With ``hold`` its messages wait until ``release``: the caller reads the current state after
        subscribing, sends it, and releases only what is newer, so nothing falls between the two.
        """
        subscriber.topics.add(topic)
        if owner is not None:
            subscriber.owners[topic] = owner
        if hold:
            subscriber.held[topic] = []
        self._by_topic[topic].add(subscriber)

    def release(self, subscriber: Subscriber, topic: str, version: int) -> None:
        """Deliver the held messages newer than ``version`` (the state just sent) and drop older ones from now on."""
        subscriber.floors[topic] = version
        for message in subscriber.held.pop(topic, []):
            if message["data"]["version"] > version:
                subscriber.offer(message)

    def unsubscribe(self, subscriber: Subscriber, topic: str) -> None:
        subscriber.topics.discard(topic)
        subscriber.owners.pop(topic, None)
        subscriber.held.pop(topic, None)
        subscriber.floors.pop(topic, None)
        members = self._by_topic.get(topic)
        if members is not None:
            members.discard(subscriber)
            if not members:
                del self._by_topic[topic]

    def publish(self, topic: str, message: dict[str, Any], allowed: set[Subscriber] | None = None) -> None:
        """Offer a message to the topic's subscribers (those in ``allowed``, if given) who may see it."""
        owner = message.pop("owner", None)
        version = message.get("data", {}).get("version", 0)
        encoded: str | None = None  # encoded once, on first need, for all its receivers
        for subscriber in list(self._by_topic.get(topic, ())):
            if allowed is not None and subscriber not in allowed:
                continue
            actor = subscriber.actor
            if topic == "data_changes" and not can_see(actor.role, actor.user_id, owner or ""):
                continue
            if topic in subscriber.owners and not can_see(actor.role, actor.user_id, subscriber.owners[topic]):
                self.unsubscribe(subscriber, topic)
                subscriber.offer({"type": "error", "code": "forbidden", "message": f"{topic} is no longer visible"})
                continue
            if topic in subscriber.held:
                subscriber.held[topic].append({**message, "topic": topic})
            elif version > subscriber.floors.get(topic, -1):
                # One encoding for every receiver: encoding per socket cost most of the fan-out to
                # 1,000 subscribers (bench/live.py).
                encoded = encoded or orjson.dumps({**message, "topic": topic}).decode()
                subscriber.offer(encoded)

    async def recheck(self, candidates: set[Subscriber], fresh: set[str]) -> set[Subscriber]:
        """Re-read the candidates' users; close the disabled; return those who may receive now.

        One lookup per user; users in ``fresh`` bypass the cache. If a lookup fails, that user's
        connections receive nothing this time (fail closed) but stay open.
        """
        by_user: dict[str, list[Subscriber]] = defaultdict(list)
        for subscriber in candidates:
            by_user[subscriber.actor.user_id].append(subscriber)
        allowed: set[Subscriber] = set()
        for user_id, subscribers in by_user.items():
            try:
                row = await current_row(self.users, user_id, user_id in fresh)
            except PostgresError:
                log.exception("cannot re-check user %s; their connections skip this change", user_id)
                continue
            for subscriber in subscribers:
                if (
                    row is None
                    or row.disabled
                    or row.token_generation > subscriber.token_generation
                    or (self.revocations is not None and token_revoked(self.revocations, subscriber.token_id))
                ):
                    subscriber.close(POLICY_VIOLATION, "the user is disabled, changed their password or logged out")
                    self.disconnect(subscriber)
                    continue
                if row[1] != subscriber.actor.role:
                    subscriber.actor = Actor(user_id, row[1])
                allowed.add(subscriber)
        return allowed

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

    async def _execution_states(self, outgoing: list[tuple[str, dict[str, Any], Any]]) -> dict[str, dict[str, Any]]:
        """execution id -> its current status, for the executions of this batch someone follows.

        The spec's ``execution_update`` carries the execution's status as its ``data`` (what
        ``execution_status`` answers); read once per batch, and only for followed executions. The status
        is as of now, so at least as new as the event it comes with (``version``, ``event``). Someone may
        start following one of them while a lookup runs: they are looked up too, until none is left, and
        the caller publishes without yielding in between, so no update goes out without its status.
        """
        states: dict[str, dict[str, Any]] = {}
        looked_up: set[str] = set()
        while True:
            ids = {
                message["execution_id"]
                for topic, message, _ in outgoing
                if message["type"] == "execution_update" and self._by_topic.get(topic)
            } - looked_up
            if not ids:
                return states
            looked_up |= ids
            try:
                async with self.pool.connection() as conn:
                    rows = await get_executions(conn, sorted(ids))
            except PostgresError:
                log.exception("execution status lookup failed; those updates carry only their event and version")
                return states
            states.update({row["execution_id"]: msgspec.to_builtins(to_status(row)) for row in rows})

    async def _notifications(self, changes: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """user id -> the notifications this batch produced for connected users (one query, only if any)."""
        causes = [(c["id"], c["version"]) for c in changes if c["type"] in NOTIFYING]
        connected = {s.actor.user_id for s in self._subscribers}
        if not causes or not connected:
            return {}
        try:
            async with self.pool.connection() as conn:
                rows = await notifications_caused_by(conn, causes)
        except PostgresError:
            log.exception("notification lookup failed; they stay listed for GET /api/v1/notifications")
            return {}
        by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            if row["user_id"] in connected:
                by_user[row.pop("user_id")].append(notification_message(row))
        return by_user

    def _publish_traced(
        self, topic: str, message: dict[str, Any], allowed: set[Subscriber], change: dict[str, Any]
    ) -> None:
        """Publish under a "live <event type>" span, the child of the projection's span for the event."""
        assert self.tracer is not None
        with self.tracer.start_as_current_span(
            f"live {change['type']}",
            context=parent_context(change["traceparent"]),
            attributes={"pipeline.live_topic": topic, "pipeline.subscribers": len(self._by_topic.get(topic, ()))},
        ):
            self.publish(topic, message, allowed)

    async def _pump(self) -> None:
        queue = self.feed.subscribe()
        self.events.start_at(self.feed.positions)  # with the subscription: no batch falls between
        try:
            while True:
                batch = await queue.get()
                try:
                    await self._deliver(batch)
                except Exception:  # a batch the hub cannot handle must not silence every connection and stream
                    log.exception("live hub: a change batch failed; its live messages are lost, the hub goes on")
        finally:
            self.feed.unsubscribe(queue)

    async def _deliver(self, batch: dict[str, Any]) -> None:
        """One committed batch out to the topics, the users' notifications and the event streams."""
        if self._by_topic.get("data_changes"):  # owners matter only to data_changes subscribers
            await self._learn_owners(batch.get("changes", []))
        outgoing = [
            (topic, message, change)
            for change in batch.get("changes", [])
            for topic, message in messages_for({**change, "owner": self._owners.get(change["id"])})
        ]
        notes = await self._notifications(batch.get("changes", []))
        fresh = {s.actor.user_id for s in self._subscribers} if batch.get("truncated") else changed_users(batch)
        await self.events.advance(changed_users(batch), bool(batch.get("truncated")))
        candidates = {s for topic, _, _ in outgoing for s in self._by_topic.get(topic, ())}
        candidates |= {s for s in self._subscribers if s.actor.user_id in fresh or s.actor.user_id in notes}
        allowed = await self.recheck(candidates, fresh) if candidates else set()
        # The last await before publishing: whoever follows an execution of the batch from here on was
        # looked up (a subscriber joining later reads the execution after this batch's commit itself).
        states = await self._execution_states(outgoing)
        for _, message, _ in outgoing:
            state = states.get(message.get("execution_id", ""))
            if state is not None:
                message["data"] = status_at(state, message["data"])
        for topic, message, change in outgoing:
            if self.tracer is not None and "traceparent" in change:
                self._publish_traced(topic, message, allowed, change)
            else:
                self.publish(topic, message, allowed)
        for subscriber in allowed:  # every open connection of the user, no subscription needed
            for note in notes.get(subscriber.actor.user_id, ()):
                subscriber.offer({"type": "notification", "data": note})
        if batch.get("missed"):  # the feed was down or the hub behind: some changes were not announced
            for subscriber in allowed:
                subscriber.offer(resync_message(subscriber.topics))
