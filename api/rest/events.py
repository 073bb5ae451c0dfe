"""REST: the event stream as Server-Sent Events (api/event_streams.py).

``GET /api/v1/events/stream?after=&types=&aggregate_id=``: each event is an SSE message with
``id:`` its position, ``event: event`` and the event as JSON; a client that falls behind gets
``event: lagged`` (its ``id:`` the position to resume from) and the stream ends. ``Last-Event-ID``
(what ``EventSource`` sends when it reconnects) wins over ``after``, so a reconnect resumes exactly.
A stream with nothing to send writes a ``: keep-alive`` comment every ``event_stream.keepalive_seconds``,
and ends with ``event: error`` (reason ``token_expired``) when the access token that opened it expires.
Open streams count against the user's ``websocket.max_connections_per_user`` with their WebSockets
(api/ws_limits.py): the next is 429 ``too_many_connections``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import AsyncGenerator
from typing import Annotated, Any

import orjson
from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from psycopg import Error as PostgresError

from api.auth import actor_of, principal_of
from api.errors import ApiError
from api.event_streams import (
    MAX_POSITION_CHARS,
    Check,
    HiddenAggregate,
    Lagged,
    StreamRequest,
    follow,
    refuse_hidden,
    refuse_unreachable,
    stream_request,
)
from api.live_rights import AccessEnded, recheck
from api.rbac import Permission, has_permission, requires
from api.ws_expiry import MESSAGE as TOKEN_EXPIRED
from api.ws_limits import UserConnections
from commands.envelope import Actor
from infra.runtime.bootstrap import ApiContainer

log = logging.getLogger("pipeline.events")
MAX_TYPES_CHARS = 4000
KEEPALIVE = ServerSentEventMessage(data=None, comment="keep-alive")  # no data line: no message event
EXPIRED = ServerSentEventMessage(
    event="error", data=orjson.dumps({"reason": "token_expired", "message": TOKEN_EXPIRED}).decode()
)


class EventsController(Controller):
    path = "/api/v1/events"
    tags = ["events"]

    @get(
        "/stream",
        operation_id="streamEvents",
        summary="Follow the event log from a position (Server-Sent Events)",
        media_type="text/event-stream",
        response_description="An open text/event-stream: `event: event` messages (`id:` the position after the"
        " event, `data:` the event as JSON), ending only with `event: lagged` (resume from its `id:`) or"
        " `event: error`",
        opt={**requires(Permission.READ), "uncompressed": True},  # each message must reach the client as it is written
    )
    async def stream(
        self,
        request: Request[Any, Any, Any],
        container: NamedDependency[ApiContainer],
        after: Annotated[
            str | None,
            QueryParameter(
                max_length=MAX_POSITION_CHARS,
                description="Start after this position ('<partition>:<offset>,...' from an event's id), 'now' for"
                " only new events; absent: from the beginning",
            ),
        ] = None,
        types: Annotated[
            str | None,
            QueryParameter(
                max_length=MAX_TYPES_CHARS,
                description="Comma-separated event types (DataObject.Ingested) or aggregate types (Execution)",
            ),
        ] = None,
        aggregate_id: Annotated[
            str | None, QueryParameter(max_length=36, description="Only this aggregate's events")
        ] = None,
        last_event_id: Annotated[
            str | None,
            HeaderParameter(
                name="Last-Event-ID",
                max_length=MAX_POSITION_CHARS,
                description="Sent by EventSource on reconnect: resume after it (wins over after)",
            ),
        ] = None,
    ) -> ServerSentEvent:
        """Events after the position, first from the log, then live; non-admins see their own objects',
        executions' and user's events. Each message's ``id:`` is the position after it."""
        position = last_event_id if last_event_id is not None else after
        wanted = None if types is None else [t.strip() for t in types.split(",")]
        try:
            parsed = stream_request(position, wanted, aggregate_id, container.settings.event_stream)
            await refuse_unreachable(parsed, container.bus.events_end)
        except ValueError as exc:
            raise ApiError(400, "validation_error", str(exc), {"field": _field_named(str(exc))}) from exc
        try:
            await refuse_hidden(parsed, actor_of(request), container)
        except HiddenAggregate as exc:
            raise ApiError(404, "not_found", str(exc), {"field": "aggregate_id"}) from exc

        async def check(fresh: bool) -> Actor:
            principal = await recheck(request, fresh)
            if not has_permission(principal.role, Permission.READ):
                raise AccessEnded(f"the {principal.role} role lacks the read permission")
            return actor_of(request)

        slots: UserConnections = request.app.state.user_connections
        user_id = actor_of(request).user_id
        if not slots.acquire(user_id):  # each stream holds a live buffer: as many as WebSockets, not unbounded
            raise ApiError(429, "too_many_connections", slots.refusal(), {"limit": slots.limit})
        messages = _messages(request, parsed, check)
        keepalive = container.settings.event_stream.keepalive_seconds
        slot = _Slot(slots, user_id)
        stream = _holding(_paced(messages, keepalive, principal_of(request).expires_at), slot)
        # A generator that never started (HEAD ends with the headers) runs no ``finally``: its slot is
        # given back when it is dropped.
        weakref.finalize(stream, slot.release)
        return ServerSentEvent(stream)


def _field_named(message: str) -> str:
    """The parameter a stream_request error names ('after', 'types', 'aggregate_id'); 'after' for a position."""
    for name in ("types", "aggregate_id"):
        if f"'{name}'" in message:
            return name
    return "after"


class _Slot:
    """One stream's place in its user's live connections, given back once."""

    def __init__(self, slots: UserConnections, user_id: str) -> None:
        self.slots, self.user_id, self.held = slots, user_id, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.slots.release(self.user_id)


async def _holding(
    messages: AsyncGenerator[ServerSentEventMessage, None], slot: _Slot
) -> AsyncGenerator[ServerSentEventMessage, None]:
    """``messages``, giving the stream's slot back as soon as it ends (finished, failed or disconnected)."""
    try:
        async for message in messages:
            yield message
    finally:
        slot.release()
        await messages.aclose()  # closed already unless this generator was closed from outside


async def _paced(
    messages: AsyncGenerator[ServerSentEventMessage, None], keepalive: float, expires_at: float
) -> AsyncGenerator[ServerSentEventMessage, None]:
    """``messages``, with a keep-alive comment whenever ``keepalive`` seconds pass without one (0: never),
    ending with ``event: error`` (reason ``token_expired``) when the access token that opened the stream
    expires, as a WebSocket is closed then (api/ws_expiry.py), however quiet the stream is.

    The next message is awaited in a task that a quiet interval does not cancel (cancelling would
    end the stream's generator); only the end of the response cancels it.
    """
    pending: asyncio.Future[ServerSentEventMessage] = asyncio.ensure_future(anext(messages))
    try:
        while True:
            remaining = expires_at - time.time()
            if remaining <= 0:
                yield EXPIRED
                return
            wait = min(keepalive, remaining) if keepalive > 0 else remaining
            done, _ = await asyncio.wait({pending}, timeout=None if math.isinf(wait) else wait)
            if not done:
                if keepalive > 0 and time.time() < expires_at:
                    yield KEEPALIVE
                continue
            try:
                message = pending.result()
            except StopAsyncIteration:
                return
            yield message
            pending = asyncio.ensure_future(anext(messages))
    finally:
        # No await here but the generator's own close: a disconnect ends the response by cancelling
        # this task, and any other await would be interrupted again.
        if not pending.done():
            pending.cancel()  # the generator runs inside that task: the cancellation ends it there
        else:
            if not pending.cancelled():
                pending.exception()  # seen (raised above, or the response ended first)
            await messages.aclose()


async def _messages(
    request: Request[Any, Any, Any], parsed: StreamRequest, check: Check
) -> AsyncGenerator[ServerSentEventMessage, None]:
    try:
        async for item in follow(request.app.state.hub.events, parsed, actor_of(request), check):
            if isinstance(item, Lagged):
                body = {"position": item.position, "message": "the client fell behind; reconnect from position"}
                yield ServerSentEventMessage(id=item.position, event="lagged", data=orjson.dumps(body).decode())
                return
            position, event = item
            yield ServerSentEventMessage(id=position, event="event", data=orjson.dumps(event).decode())
    except AccessEnded as exc:
        yield ServerSentEventMessage(
            event="error", data=orjson.dumps({"reason": "forbidden", "message": str(exc)}).decode()
        )
    except PostgresError as exc:
        log.warning("event stream failed: %s", exc)
        body = {"reason": "unavailable", "message": "the event stream failed; reconnect"}
        yield ServerSentEventMessage(event="error", data=orjson.dumps(body).decode())
