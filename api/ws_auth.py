"""GraphQL WebSockets authenticated by the ``graphql-transport-ws`` ``connection_init`` payload.

Browsers cannot set headers on a WebSocket, so GraphQL clients (Apollo, urql, gql, Hasura) send the
token in the first protocol message: ``{"type": "connection_init", "payload": {...}}`` with
``{"Authorization": "Bearer ..."}``, ``{"headers": {"Authorization": "Bearer ..."}}`` or
``{"authToken": "..."}``. A handshake without a token that asks for a GraphQL subprotocol is let
through; the receive channel then reads the ``connection_init`` before the GraphQL server does,
sets ``scope["user"]`` when the token authenticates, and otherwise closes the connection with the
protocol's ``4403 Forbidden`` (the server never sees the message). Until then no operation can run:
the protocol itself refuses ``subscribe`` before ``connection_ack``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from litestar.types import Receive, ReceiveMessage, Scope, Send

GRAPHQL_PATH = "/api/graphql"
GRAPHQL_SUBPROTOCOLS = {"graphql-transport-ws", "graphql-ws"}
FORBIDDEN = 4403  # graphql-transport-ws: Forbidden
TRY_AGAIN_LATER = 1013  # RFC 6455: the user already holds websocket.max_connections_per_user

Verify = Callable[[str], Awaitable[Any | None]]  # a token -> its principal, or None when refused


def defers_to_connection_init(scope: Scope) -> bool:
    """A GraphQL WebSocket handshake whose token may come in the connection_init payload."""
    offered: Any = scope.get("subprotocols") or ()
    return scope.get("path") == GRAPHQL_PATH and bool(GRAPHQL_SUBPROTOCOLS.intersection(offered))


def token_of(payload: Any) -> str:
    """The bearer token of a connection_init payload, in any of the shapes GraphQL clients use."""
    if not isinstance(payload, dict):
        return ""
    headers = payload.get("headers")
    candidates = [payload.get("Authorization"), payload.get("authorization")]
    if isinstance(headers, dict):
        candidates += [headers.get("Authorization"), headers.get("authorization")]
    for value in candidates:
        if isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    bare = payload.get("authToken") or payload.get("token")
    return bare.strip() if isinstance(bare, str) else ""


def init_authenticating_receive(
    scope: Scope, receive: Receive, send: Send, verify: Verify, admit: Callable[[Any], bool]
) -> Receive:
    """``receive`` that authenticates the connection by its first connection_init message.

    ``admit`` takes the caller's connection slot (False: they hold too many; closed with 1013).
    """
    done = False

    async def authenticating_receive() -> ReceiveMessage:
        nonlocal done
        message = await receive()
        if done or message["type"] != "websocket.receive":
            return message
        try:
            body = orjson.loads(message.get("text") or message.get("bytes") or b"")
        except orjson.JSONDecodeError:
            return message  # the GraphQL server answers malformed messages itself
        if not isinstance(body, dict) or body.get("type") != "connection_init":
            return message  # refused by the protocol: nothing runs before connection_init
        done = True
        principal = await verify(token_of(body.get("payload")))
        if principal is None:
            await send({"type": "websocket.close", "code": FORBIDDEN, "reason": "Forbidden"})
            return {"type": "websocket.disconnect", "code": FORBIDDEN}
        if not admit(principal):
            reason = "too many open connections for this user"
            await send({"type": "websocket.close", "code": TRY_AGAIN_LATER, "reason": reason})
            return {"type": "websocket.disconnect", "code": TRY_AGAIN_LATER}
        scope["user"] = principal
        return message

    return authenticating_receive
