"""GraphQL ``events(afterPosition, types, aggregateId)``: the event stream (api/event_streams.py).

Each item is a ``StreamEvent`` carrying its ``position`` (pass it as ``afterPosition`` to resume
exactly after it), or, last, a ``StreamLagged`` when the client fell behind the live stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Annotated, Any

import strawberry
from graphql import GraphQLError
from psycopg import Error as PostgresError
from strawberry.scalars import JSON

from api.auth import actor_of
from api.event_streams import HiddenAggregate, Lagged, follow, refuse_hidden, refuse_unreachable, stream_request
from api.graphql.errors import require
from api.graphql.live import live_actor
from api.graphql.objects import GqlInfo
from api.rbac import Permission
from api.ws_limits import UserConnections
from commands.envelope import Actor


@strawberry.type(description="One event of the log, with the stream position just after it")
class StreamEvent:
    position: str
    seq: int
    partition: int
    offset: int
    event_id: str
    event_type: str
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    schema_version: int
    occurred_at: datetime
    actor: str
    actor_role: str
    command_id: str
    correlation_id: str
    causation_id: str
    data: JSON


@strawberry.type(description="The client fell behind the live stream; subscribe again after this position")
class StreamLagged:
    position: str
    message: str


EventStreamItem = Annotated[StreamEvent | StreamLagged, strawberry.union("EventStreamItem")]


def to_stream_event(position: str, event: dict[str, Any]) -> StreamEvent:
    return StreamEvent(position=position, **{**event, "occurred_at": datetime.fromisoformat(event["occurred_at"])})


@strawberry.type
class EventSubscription:
    @strawberry.subscription(
        description="Events after afterPosition (a position from an earlier item, 'now', or none for the"
        " beginning), first from the log, then live; types: event types (DataObject.Ingested) or aggregate"
        " types (Execution); non-admins see the events of their own objects, executions and user"
    )
    async def events(
        self,
        info: GqlInfo,
        after_position: str | None = None,
        types: list[str] | None = None,
        aggregate_id: str | None = None,
    ) -> AsyncGenerator[EventStreamItem, None]:
        connection = info.context.connection
        require(connection, Permission.READ)
        container = info.context.container
        try:
            request = stream_request(after_position, types, aggregate_id, container.settings.event_stream)
            await refuse_unreachable(request, container.bus.events_end)
        except ValueError as exc:
            raise GraphQLError(str(exc), extensions={"code": 400, "reason": "validation_error"}) from exc
        try:
            await refuse_hidden(request, actor_of(connection), container)
        except HiddenAggregate as exc:
            raise GraphQLError(str(exc), extensions={"code": 404, "reason": "not_found"}) from exc

        async def check(fresh: bool) -> Actor:
            return await live_actor(connection, fresh)

        # Each stream holds a live buffer (event_stream.buffer_bytes): it takes one of the user's live
        # connection slots, as an SSE stream does, or one connection's 100 subscriptions could hold 100.
        slots: UserConnections = connection.app.state.user_connections
        user_id = actor_of(connection).user_id
        if not slots.acquire(user_id):
            raise GraphQLError(slots.refusal(), extensions={"code": 429, "reason": "too_many_connections"})
        try:
            async for item in follow(connection.app.state.hub.events, request, actor_of(connection), check):
                if isinstance(item, Lagged):
                    yield StreamLagged(position=item.position, message="the client fell behind the live stream")
                    return
                yield to_stream_event(*item)
        except PostgresError as exc:
            unavailable = {"code": 503, "reason": "unavailable"}
            raise GraphQLError("the event stream failed; subscribe again", extensions=unavailable) from exc
        finally:
            slots.release(user_id)
