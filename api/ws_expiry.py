"""A WebSocket ends when the access token that opened it expires.

A connection is authenticated once, at its handshake (or GraphQL's ``connection_init``), and may stay
open for hours: without this, a token that a REST request would refuse after
``authentication.access_token_expire_minutes`` kept its connection delivering. ``expiring_receive``
wraps the connection's ``receive``: the app always waits in it (the /ws receive loop, strawberry's
reader), so at the token's ``exp`` the wait ends, the connection is closed and the app hears a
disconnect. ``/ws`` first gets ``{"type": "error", "code": "token_expired", "message"}`` and is
closed with 1008 (policy violation, as for a disabled user); GraphQL's graphql-transport-ws is
closed with 4401 (Unauthorized). Either way the client reconnects with a fresh token
(``POST /api/v1/auth/refresh``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from litestar.types import Receive, ReceiveMessage, Scope, Send

WS_POLICY_VIOLATION = 1008
GRAPHQL_UNAUTHORIZED = 4401
MESSAGE = "the access token expired: reconnect with a new one (POST /api/v1/auth/refresh)"
REASON = "the access token expired"


def expiring_receive(scope: Scope, receive: Receive, send: Send) -> Receive:
    """``receive`` that closes the connection when ``scope["user"]``'s token expires (none yet: no limit)."""

    async def receive_until_expiry() -> ReceiveMessage:
        expires_at: Any = getattr(scope.get("user"), "expires_at", None)
        if expires_at is None:  # GraphQL before its connection_init authenticated the connection
            return await receive()
        remaining = expires_at - time.time()
        if remaining > 0:
            try:
                async with asyncio.timeout(remaining):
                    return await receive()
            except TimeoutError:
                pass
        return await _close(scope, send)

    return receive_until_expiry


async def _close(scope: Scope, send: Send) -> ReceiveMessage:
    if scope.get("path", "").startswith("/ws/"):
        error = orjson.dumps({"type": "error", "code": "token_expired", "message": MESSAGE}).decode()
        await send({"type": "websocket.send", "text": error, "bytes": None})
        code = WS_POLICY_VIOLATION
    else:
        code = GRAPHQL_UNAUTHORIZED
    await send({"type": "websocket.close", "code": code, "reason": REASON})
    return {"type": "websocket.disconnect", "code": code}
