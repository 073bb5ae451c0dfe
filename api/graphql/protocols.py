"""strawberry's two GraphQL WebSocket protocols, refusing malformed messages instead of failing on them.

strawberry reads a message's fields as the protocol says they are (``message["payload"]["query"]``,
``message["id"] in operations``) and catches only a missing key: a message of the wrong shape
(``{"type": "subscribe", "id": "1", "payload": 5}``, an object as ``id``, a JSON array) raised a
TypeError that ended the connection with 4500 Internal Server Error, and the legacy ``graphql-ws``
handler did so even for a missing key. Here every message is checked first: one that is not of its
type's shape closes the connection with 4400 ("Failed to parse message"), as graphql-transport-ws
prescribes for an invalid message.

A message larger than ``websocket.max_message_size`` (the bound of ``/ws`` too) closes the connection
with 1009 (Message Too Big, RFC 6455 7.4.1) before it is decoded: uvicorn takes frames up to 16 MiB.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from litestar.exceptions import WebSocketDisconnect
from strawberry.http.exceptions import NonJsonMessageReceived, NonTextMessageReceived
from strawberry.litestar.controller import LitestarWebSocketAdapter
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler

INVALID_MESSAGE = 4400
MALFORMED = "Failed to parse message"
MESSAGE_TOO_BIG = 1009
# The message types that name an operation, and those whose payload is an operation, per protocol.
_WITH_ID = {"subscribe", "complete", "next", "error", "start", "stop"}
_OPERATIONS = {"subscribe", "start"}


def well_formed(message: Any) -> bool:
    """Is ``message`` an object with a string ``type`` whose ``id`` and ``payload`` have the shapes the
    handlers read (an operation's payload: ``query`` a string, ``variables`` an object,
    ``operationName`` a string, the latter two optional)?"""
    if not isinstance(message, dict) or not isinstance(kind := message.get("type"), str):
        return False
    if kind in _WITH_ID and not isinstance(message.get("id"), str):
        return False
    if kind not in _OPERATIONS:
        return True
    payload = message.get("payload")
    return (
        isinstance(payload, dict)
        and isinstance(payload.get("query"), str)
        and isinstance(payload.get("variables", {}) or {}, dict)
        and isinstance(payload.get("operationName", "") or "", str)
    )


class CheckedTransportWS(BaseGraphQLTransportWSHandler[Any, Any]):
    """graphql-transport-ws: a malformed message closes with 4400, never 4500."""

    async def handle_message(self, message: Any) -> None:
        if not well_formed(message):
            await self.handle_invalid_message(MALFORMED)
            return
        await super().handle_message(message)


class CheckedLegacyWS(BaseGraphQLWSHandler[Any, Any]):
    """The legacy graphql-ws protocol (subscriptions-transport-ws): the same check, the same close."""

    async def handle_message(self, message: Any) -> None:
        if not well_formed(message):
            await self.websocket.close(code=INVALID_MESSAGE, reason=MALFORMED)
            return
        await super().handle_message(message)


class BoundedWebSocket(LitestarWebSocketAdapter):
    """strawberry's Litestar WebSocket, closing with 1009 on a message above the view's
    ``max_message_size`` (UTF-8 bytes) instead of decoding it."""

    async def iter_json(self, *, ignore_parsing_errors: bool = False) -> AsyncGenerator[object, None]:
        limit: int = self.view.max_message_size  # type: ignore[attr-defined]
        try:
            while self.ws.connection_state != "disconnect":
                text = await self.ws.receive_text()
                if len(text) > limit // 4 and len(text.encode()) > limit:  # 4 bytes a character at most
                    await self.close(MESSAGE_TOO_BIG, f"messages are limited to {limit} bytes")
                    return
                if text == "":  # litestar's text of a binary frame
                    raise NonTextMessageReceived
                try:
                    yield self.view.decode_json(text)
                except json.JSONDecodeError as exc:
                    if not ignore_parsing_errors:
                        raise NonJsonMessageReceived from exc
        except WebSocketDisconnect:
            pass
