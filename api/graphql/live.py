"""GraphQL subscriptions re-check their caller before each delivery (see api/live_rights.py).

A disabled caller's subscription ends with a 403 error, and once that error and the ``complete``
are sent the whole graphql-transport-ws connection is closed with 4403 (Forbidden): its other
subscriptions were authorized by the same, now disabled, user.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from graphql import GraphQLError
from litestar import WebSocket
from litestar.connection import ASGIConnection
from psycopg import Error as PostgresError

from api.auth import principal_of
from api.live_rights import GRAPHQL_FORBIDDEN, AccessEnded, mentions_user, recheck
from api.rbac import Permission, has_permission
from commands.envelope import Actor

log = logging.getLogger("pipeline.graphql")


async def live_caller(connection: ASGIConnection[Any, Any, Any, Any], message: dict[str, Any] | None) -> Actor:
    """The subscriber as they are now, before delivering what ``message`` (a feed message) brings.

    Raises GraphQLError (403) when they are disabled or lost the read permission, after arranging
    for the connection to close with 4403; 503 when their row cannot be read.
    """
    user_id = principal_of(connection).user_id
    return await live_actor(connection, fresh=message is not None and mentions_user(message, user_id))


async def live_actor(connection: ASGIConnection[Any, Any, Any, Any], fresh: bool) -> Actor:
    """``live_caller`` for a caller whose user row must be re-read (``fresh``) or may come from the cache."""
    user_id = principal_of(connection).user_id
    try:
        principal = await recheck(connection, fresh=fresh)
    except AccessEnded as exc:
        _close_when_done(connection)
        raise GraphQLError(str(exc), extensions={"code": 403, "reason": "forbidden"}) from exc
    except PostgresError as exc:
        log.warning("cannot re-check subscriber %s: %s", user_id, exc)
        unavailable = {"code": 503, "reason": "unavailable"}
        raise GraphQLError("cannot check the caller right now", extensions=unavailable) from exc
    if not has_permission(principal.role, Permission.READ):
        _close_when_done(connection)
        message_text = f"the {principal.role} role lacks the read permission"
        raise GraphQLError(message_text, extensions={"code": 403, "reason": "forbidden"})
    return Actor(principal.user_id, principal.role)


def _close_when_done(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """Close a WebSocket with 4403 after this operation's task has sent its error and ``complete``."""
    if not isinstance(connection, WebSocket):
        return  # a subscription over HTTP simply ends with the error
    socket = connection

    async def close() -> None:
        with contextlib.suppress(Exception):  # the client may be gone already
            await socket.close(code=GRAPHQL_FORBIDDEN, reason="Forbidden")

    def schedule(_: object = None) -> None:
        closing = asyncio.ensure_future(close())
        _closing.add(closing)  # keep a reference until it has run
        closing.add_done_callback(_closing.discard)

    task = asyncio.current_task()
    if task is None:
        schedule()
    else:
        task.add_done_callback(schedule)


_closing: set[asyncio.Future[None]] = set()


def missed(message: dict[str, Any]) -> None:
    """End a subscription that cannot tell what it missed: after the change feed reconnected or its
    queue overflowed (projections/changes.py), some committed changes were not announced to it. The error
    (503, ``resync``) tells the client to re-read and subscribe again, rather than go on with a gap."""
    if message.get("missed"):
        raise GraphQLError(
            "the live feed was interrupted and changes may have been missed; re-read and subscribe again",
            extensions={"code": 503, "reason": "resync"},
        )
