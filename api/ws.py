"""WebSocket ``/ws/{client_id}``: the spec's message protocol over the live hub.

Client -> server: ``{"type": "subscribe", "topic": T, "after"?: position token}``,
``{"type": "unsubscribe", "topic": T}``,
``{"type": "execution_status", "execution_id": ID}``, ``{"type": "ping"}``,
``{"type": "chat_message", "content": TEXT, "conversation_id"?: ID}`` (api/chat_service.py).
Server -> client: ``subscribed``, ``unsubscribed``, ``data_change``, ``execution_update``,
``execution_status``, ``chat_response``, ``event``, ``lagged``, ``pong`` and ``error``
(``{"type": "error", "code", "message"}``).
Topics: ``data_changes``, ``execution:{id}``, ``events``. Joining ``execution:{id}`` answers ``subscribed`` and then an
``execution_update`` whose ``data`` is the current status (with ``version``); later updates carry the
status too (api/hub.py), with ``event`` and ``version`` of each newer event, so a client that subscribes
right after submitting misses nothing.

``events`` is the event stream from a position (api/event_streams.py): ``{"type": "subscribe", "topic":
"events", "after"?: position or "now", "types"?: [...], "aggregate_id"?: ID}`` answers ``subscribed``
(with the starting ``position``), then ``{"type": "event", "topic": "events", "position", "event"}``
for each event, caught up and then live; a stream that falls behind ends with ``{"type": "lagged",
"topic": "events", "position"}``. One per connection: subscribing again replaces it.

The caller is re-checked for every client message and every delivered change (api/live_rights.py):
a disabled user's connection is closed with 1008 (policy violation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

import msgspec
from litestar import WebSocket, websocket
from litestar.di import NamedDependency
from litestar.exceptions import WebSocketDisconnect
from litestar.params import FromPath
from psycopg import Error as PostgresError

from api.auth import actor_of, principal_of
from api.chat_service import chat_message
from api.errors import ApiError, refuse_websocket
from api.event_streams import HiddenAggregate, Lagged, follow, refuse_hidden, refuse_unreachable, stream_request
from api.execution_service import read_execution, read_fresh_execution
from api.graphql.masking import classify
from api.hub import CLOSE, LiveHub, Subscriber
from api.inputs import ChatMessage, parse
from api.live_rights import POLICY_VIOLATION, AccessEnded, recheck
from api.ratelimit import RateLimiter, Rule
from api.rbac import Permission, has_permission
from api.rest.executions import to_status
from api.ws_fields import unknown_fields
from commands.envelope import Actor
from infra.adapters.command_bus import CommandTimeout
from infra.runtime.bootstrap import ApiContainer
from infra.runtime.metrics import WEBSOCKET_CONNECTIONS
from projections.event_stream import format_position

TOPIC = re.compile(r"(data_changes|events|execution:[0-9a-fA-F-]{36})")  # whole topics only: fullmatch
# The spec takes any client id (a user id, an email, a UUID); it names nothing here, so only control
# characters and lengths past 128 are refused.
CLIENT_ID = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
CLOSE_TIMEOUT_S = 5.0
log = logging.getLogger("pipeline.ws")


async def execution_status(connection: Any, container: ApiContainer, message: dict[str, Any]) -> dict[str, Any]:
    """The spec's ``execution_status`` request: the same status REST answers."""
    execution_id = message.get("execution_id")
    if not isinstance(execution_id, str):
        return error("invalid_message", "execution_status needs an 'execution_id'")
    try:
        row = await read_execution(connection, container, execution_id)
    except ApiError as exc:
        return error(exc.reason, exc.message)
    return {"type": "execution_status", "data": msgspec.to_builtins(to_status(row))}


async def subscribe_execution(
    socket: Any, container: ApiContainer, hub: LiveHub, subscriber: Subscriber, topic: str, after: Any
) -> dict[str, Any] | None:
    """Join ``execution:{id}``: ``subscribed``, then the current state, then every newer update.

    ``after`` (the submit's position token) makes it wait for the read model; without it an execution
    the caller has just submitted is waited for too (api/execution_service.read_fresh_execution).
    """
    if after is not None and not isinstance(after, str):
        return error("invalid_message", "'after' is a position token string")
    execution_id = topic.split(":", 1)[1]
    try:  # the same visibility as reading it: yours, or any for admins
        row = await read_fresh_execution(socket, container, execution_id, after)
        hub.subscribe(subscriber, topic, row["submitter"], hold=True)
        try:
            row = await read_execution(socket, container, execution_id)  # after joining: nothing falls between
        except BaseException:
            hub.unsubscribe(subscriber, topic)
            raise
    except ApiError as exc:
        return error(exc.reason, exc.message)
    subscriber.offer({"type": "subscribed", "topic": topic})
    state = msgspec.to_builtins(to_status(row))
    subscriber.offer({"type": "execution_update", "execution_id": execution_id, "topic": topic, "data": state})
    hub.release(subscriber, topic, row["version"])
    return None


async def chat(connection: Any, container: ApiContainer, message: dict[str, Any]) -> dict[str, Any]:
    """The spec's ``chat_message``: the reply is ``chat_response`` with the answer, or an ``error``."""
    # Every field but the type goes to the struct, which refuses unknown ones: a misspelt
    # ``conversationId`` must not silently start a new conversation.
    fields: dict[str, Any] = {key: value for key, value in message.items() if key != "type"}
    try:
        reply = await chat_message(connection, container, parse(ChatMessage, fields))
    except ApiError as exc:
        return error(exc.reason, exc.message)
    except CommandTimeout:
        return error("command_timeout", "the chat's outcome did not arrive in time; ask again")
    return {"type": "chat_response", "data": msgspec.to_builtins(reply)}


async def subscribe_events(
    socket: Any, container: ApiContainer, hub: LiveHub, sub: Subscriber, message: Any
) -> dict[str, Any] | None:
    """Start the connection's event stream (replacing one already running); an error for bad parameters."""
    try:
        request = stream_request(
            message.get("after"), message.get("types"), message.get("aggregate_id"), container.settings.event_stream
        )
        await refuse_unreachable(request, container.bus.events_end)
    except ValueError as exc:
        return error("invalid_message", str(exc))
    try:
        await refuse_hidden(request, sub.actor, container)
    except HiddenAggregate as exc:
        return error("not_found", str(exc))
    stop_events(sub)
    sub.stream_task = asyncio.create_task(_stream_events(socket, hub, sub, request))
    return None


def stop_events(sub: Subscriber) -> None:
    if sub.stream_task is not None:
        sub.stream_task.cancel()
        sub.stream_task = None
    while not sub.stream_outbox.empty():  # what the old stream queued is not part of the new one
        sub.stream_outbox.get_nowait()


async def _stream_events(socket: Any, hub: LiveHub, sub: Subscriber, request: Any) -> None:
    async def check(fresh: bool) -> Actor:
        principal = await recheck(socket, fresh)
        if not has_permission(principal.role, Permission.READ):
            raise AccessEnded(f"the {principal.role} role lacks the read permission")
        sub.actor = actor_of(socket)
        return sub.actor

    start = "now" if request.after is None else format_position(request.after)
    await sub.put_stream({"type": "subscribed", "topic": "events", "position": start})
    try:
        async for item in follow(hub.events, request, sub.actor, check):
            if isinstance(item, Lagged):
                lagged = {"type": "lagged", "topic": "events", "position": item.position}
                await sub.put_stream({**lagged, "message": "the client fell behind; subscribe again from position"})
                return
            position, event = item
            await sub.put_stream({"type": "event", "topic": "events", "position": position, "event": event})
    except AccessEnded:
        sub.close(POLICY_VIOLATION, "the user is disabled or changed their password")
    except Exception as exc:  # PostgreSQL unreachable, or worse: the connection's other topics go on
        log.warning("event stream failed: %s", exc, exc_info=not isinstance(exc, PostgresError))
        await sub.put_stream({**error("unavailable", "the event stream failed; subscribe again"), "topic": "events"})


def error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


async def handle(
    socket: Any, container: ApiContainer, hub: LiveHub, subscriber: Subscriber, message: Any
) -> dict[str, Any] | None:
    """The reply to one client message (None: nothing to say)."""
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return error("invalid_message", "messages are JSON objects with a string 'type'")
    kind = message["type"]
    principal = await recheck(socket, fresh=False)  # AccessEnded closes the connection
    subscriber.actor = actor_of(socket)
    if not has_permission(principal.role, Permission.READ):  # every message here reads
        return error("forbidden", f"the {principal.role} role lacks the read permission")
    if kind in ("subscribe", "unsubscribe"):
        topic = message.get("topic")
        if not isinstance(topic, str) or not TOPIC.fullmatch(topic):
            return error("invalid_topic", "topics are 'data_changes', 'events' or 'execution:<id>'")
        shape = kind if kind == "unsubscribe" else f"{kind}:{topic.split(':')[0]}"
        if (extra := unknown_fields(message, shape)) is not None:
            return error("invalid_message", extra)
        if topic == "events":
            if kind == "subscribe":
                return await subscribe_events(socket, container, hub, subscriber, message)
            stop_events(subscriber)
            return {"type": "unsubscribed", "topic": topic}
        if kind == "subscribe":
            if topic.startswith("execution:"):
                return await subscribe_execution(socket, container, hub, subscriber, topic, message.get("after"))
            hub.subscribe(subscriber, topic)
            return {"type": "subscribed", "topic": topic}
        hub.unsubscribe(subscriber, topic)
        return {"type": "unsubscribed", "topic": topic}
    if kind in ("ping", "execution_status") and (extra := unknown_fields(message, kind)) is not None:
        return error("invalid_message", extra)
    if kind == "ping":
        return {"type": "pong"}
    if kind == "execution_status":
        return await execution_status(socket, container, message)
    if kind == "chat_message":
        if not has_permission(principal.role, Permission.WRITE):  # a chat message appends events
            return error("forbidden", f"the {principal.role} role lacks the write permission")
        return await chat(socket, container, message)
    shown = kind if len(kind) <= 64 else f"{kind[:64]}..."  # not a megabyte of it echoed back
    return error("unsupported", f"message type {shown!r} is not supported")


@websocket("/ws/{client_id:str}")
async def websocket_endpoint(
    socket: WebSocket[Any, Any, Any], client_id: FromPath[str], container: NamedDependency[ApiContainer]
) -> None:
    """One client's live connection."""
    hub: LiveHub = socket.app.state.hub
    limits = container.settings.websocket
    if not CLIENT_ID.fullmatch(client_id):
        message = "client_id must be 1..128 characters without control characters"
        await refuse_websocket(socket.scope, socket.send, 400, "validation_error", message, {"field": "client_id"})
        return
    if hub.connections >= limits.max_connections:
        message = "too many open connections (websocket.max_connections)"
        await refuse_websocket(socket.scope, socket.send, 503, "too_many_connections", message)
        return
    await socket.accept()
    principal = principal_of(socket)
    subscriber = hub.connect(actor_of(socket), principal.token_generation, principal.token_id)
    WEBSOCKET_CONNECTIONS.inc()
    # Either side may end the connection: the client (receive loop) or the hub (a disabled user).
    receiver = asyncio.create_task(_receive_loop(socket, container, hub, subscriber))
    sender = asyncio.create_task(_send_loop(socket, subscriber))
    tasks = {receiver, sender}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if subscriber.closed is not None:  # let the sender close the socket with the subscriber's code
            await asyncio.wait({sender}, timeout=CLOSE_TIMEOUT_S)
    finally:
        stop_events(subscriber)
        hub.disconnect(subscriber)
        WEBSOCKET_CONNECTIONS.dec()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _receive_loop(
    socket: WebSocket[Any, Any, Any], container: ApiContainer, hub: LiveHub, sub: Subscriber
) -> None:
    limits = container.settings.websocket
    limiter: RateLimiter = socket.app.state.limiter
    rule: Rule = socket.app.state.ws_message_rule
    try:
        while True:
            raw = await _receive_frame(socket)
            verdict = await limiter.hit_rule("ws", sub.actor.user_id, rule)  # per user, across connections
            if not verdict.allowed:
                reply: dict[str, Any] | None = {
                    **error("rate_limited", f"at most {limits.message_limit} WebSocket messages per user"),
                    "retry_after": max(verdict.reset, 1),
                }
            elif len(raw) > limits.max_message_size:
                reply = error("too_large", f"messages are limited to {limits.max_message_size} bytes")
            else:
                try:
                    reply = await handle(socket, container, hub, sub, msgspec.json.decode(raw))
                except (msgspec.DecodeError, RecursionError):  # a message nested ~1000 deep exhausts the stack
                    reply = error("invalid_json", "messages must be UTF-8 JSON, nested at most a few levels")
                except AccessEnded:
                    sub.close(POLICY_VIOLATION, "the user is disabled or changed their password")
                    return
                except WebSocketDisconnect:
                    raise
                except Exception as exc:  # e.g. PostgreSQL down: answer this message, keep the connection
                    _, code, text, level, traceback = classify(exc)
                    log.log(level, "/ws message failed (%s): %r", code, exc, exc_info=exc if traceback else None)
                    reply = error(code, text)
            if reply is not None:
                sub.offer(reply)
    except WebSocketDisconnect:
        pass


async def _receive_frame(socket: WebSocket[Any, Any, Any]) -> str | bytes:
    """The next frame's payload, text or binary (JSON in a binary frame is read as UTF-8 like text).

    ``receive_data(mode="text")`` would turn a binary frame into "" and answer a valid message as
    invalid JSON.
    """
    event = await socket.receive()
    if event["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(detail="disconnect event", code=event.get("code", 1000))
    text = event.get("text")
    if isinstance(text, str):
        return text
    data = event.get("bytes")
    return data if isinstance(data, bytes) else b""


async def _send_loop(socket: WebSocket[Any, Any, Any], subscriber: Subscriber) -> None:
    while True:
        message = await subscriber.next_message()
        if message is CLOSE and subscriber.closed is not None:
            code, reason = subscriber.closed
            await socket.close(code=code, reason=reason)
            return
        if subscriber.dropped:
            await socket.send_json({"type": "lagged", "dropped": subscriber.dropped})
            subscriber.dropped = 0
        if isinstance(message, str):
            await socket.send_text(message)
        else:
            await socket.send_json(message)
