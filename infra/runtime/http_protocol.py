"""uvicorn's HTTP protocol with a deadline for request headers (slow-header clients, "slowloris").

uvicorn bounds the idle time between requests on a kept-alive connection (``timeout_keep_alive``)
but not the time a client takes to send a request's headers: a client that opens a connection and
trickles a header byte every few seconds holds it, and its memory, for ever. Here each request's
headers must be complete within ``server.header_timeout_seconds`` of the connection opening (first
request) or of the request's first byte (later requests); otherwise the server answers 408 with the
error envelope and closes the connection. The request body has its own per-read bound
(api/body_timeout.py), and WebSocket connections, once upgraded, are no longer this protocol's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from infra.runtime.settings import get_settings

log = logging.getLogger("pipeline.http")


def timeout_response(message: str) -> bytes:
    """A complete HTTP/1.1 408 response carrying the error envelope (no request id: no request was read)."""
    body = orjson.dumps(
        {"error": {"code": 408, "reason": "request_timeout", "message": message, "details": None, "request_id": None}}
    )
    head = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return head + body


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose request headers do not arrive in time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = get_settings().server.header_timeout_seconds
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_deadline is None:  # a later request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        if self.header_timeout > 0:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport is None or self.transport.is_closing():
            return
        log.info("closing a connection from %s: no complete request headers in %gs", self.client, self.header_timeout)
        self.transport.write(timeout_response(f"request headers must arrive within {self.header_timeout:g}s"))
        self.transport.close()
