"""uvicorn's HTTP protocol with a deadline for request headers (slow-header clients, "slowloris").

uvicorn bounds the idle time between requests on a kept-alive connection (``timeout_keep_alive``)
but not the time a client takes to send a request's headers: a client that opens a connection and
trickles a header byte every few seconds holds it, and its memory, for ever. Here each request's
headers must be complete within ``server.header_timeout_seconds`` of the connection opening (first
request) or of the request's first byte (later requests); otherwise the server answers 408 with the
error envelope and closes the connection. The request body has its own per-read bound
(api/body_timeout.py), and WebSocket connections, once upgraded, are no longer this protocol's.

A request the parser refuses (uvicorn's plain-text "Invalid HTTP request received.") gets the error
envelope too (``send_400_response``).

It also sends a response's head and body in one write (``PairedWrites``): uvicorn writes the status
line and headers, then the body, two system calls and two TCP segments per response, each of which
the client reads separately (strace on reads by id: two writes per response before, one writev now).
The writes were a fifth of py-spy's samples of the API on reads by id, though much of that is the
client being woken on a busy 2-core machine, and one write costs about as much as one of the two did.
The bytes on the wire are the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from infra.runtime.settings import get_settings

log = logging.getLogger("pipeline.http")
HELD_WRITE_MAX_BYTES = 16 * 1024  # a response head, or a small body chunk; larger writes go out at once


def error_response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 response closing the connection, carrying the error envelope (no request id:
    no request was read)."""
    body = orjson.dumps(
        {"error": {"code": status, "reason": reason, "message": message, "details": None, "request_id": None}}
    )
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
        + b"content-type: application/json\r\nconnection: close\r\n"
        + b"content-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
    )
    return head + body


def timeout_response(message: str) -> bytes:
    """A 408 with the error envelope: the request's headers did not arrive in time."""
    return error_response(408, "request_timeout", message)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose request headers do not arrive in time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = get_settings().server.header_timeout_seconds
        # One timer per connection, not per request (arming and cancelling one per request was 2-3% of the
        # API's CPU on reads by id): it fires at the earliest deadline and, when the request whose headers
        # it waited for has moved on, is armed again only for a request still in its headers.
        self._header_deadline: asyncio.TimerHandle | None = None
        self._headers_since: float | None = None  # when the pending request's headers began (None: none pending)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._writes = PairedWrites(transport, self.loop)
        self._headers_since = self.loop.time()  # the first request's headers: from the connection's opening
        self._arm(self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_since = None
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._headers_since is None:  # a later request on a kept-alive connection
            self._headers_since = self.loop.time()
            if self._header_deadline is None:
                self._arm(self.header_timeout)

    def on_headers_complete(self) -> None:
        self._headers_since = None
        super().on_headers_complete()
        # The request's cycle was just made (its task runs from the next loop turn): its writes are paired.
        if self.cycle is not None:
            self.cycle.transport = self._writes

    def send_400_response(self, msg: str) -> None:
        """A request the HTTP parser refuses (a control character in a header, a malformed request line)
        is answered with the error envelope too, not uvicorn's plain-text "Invalid HTTP request received."."""
        message = "malformed HTTP request: the request line or a header is not valid HTTP/1.1"
        self._writes.write(error_response(400, "invalid_request", message))  # after a held write, if any
        self._writes.close()

    def _arm(self, delay: float) -> None:
        if self.header_timeout > 0:
            self._header_deadline = self.loop.call_later(delay, self._check_headers)

    def _check_headers(self) -> None:
        self._header_deadline = None
        since = self._headers_since
        if since is None:  # no request in its headers: the next one arms the timer again
            return
        left = since + self.header_timeout - self.loop.time()
        if left > 0:  # a later request than the one this timer was armed for
            self._arm(left)
            return
        if self.transport is None or self.transport.is_closing():
            return
        log.info("closing a connection from %s: no complete request headers in %gs", self.client, self.header_timeout)
        self.transport.write(timeout_response(f"request headers must arrive within {self.header_timeout:g}s"))
        self.transport.close()


class PairedWrites(asyncio.Transport):
    """A connection's transport that holds a write until the next one, then sends both in one.

    A held write goes out at the latest on the next turn of the event loop, so a streamed response's
    head (or a "100 Continue") is not kept waiting for a body that comes later; closing sends it first.
    Everything but writing and closing is the connection's own transport's.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))
        elif len(data) <= HELD_WRITE_MAX_BYTES:
            self._held = bytes(data)  # a copy, as the transport would make: the caller may reuse its buffer
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self._flush()
        self._transport.writelines(list_of_data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def abort(self) -> None:
        self._held = None
        self._transport.abort()
