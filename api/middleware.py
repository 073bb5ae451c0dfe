"""The outermost HTTP layer: request ids, the request metrics, and headers inner layers ask for.

One ASGI wrapper (and one wrapped ``send``) for what every HTTP request needs, outside litestar, so
that even requests no route matches (404, 405) carry an X-Request-ID, are counted, and name their
request id in the error envelope:

- every request gets a request id (or keeps a sane incoming X-Request-ID), in ``scope["state"]``
  and the log context, and every response carries it;
- each request is counted by method, route template (not the raw path: ids would explode the label
  set; requests no route matches count as ``unmatched``) and status, with its latency;
- headers an inner layer puts in ``scope["state"][RESPONSE_HEADERS]`` (the RateLimit-* headers of
  api/auth.py) go on the response, without a send wrapper of their own;
- an OPTIONS answer's Allow header is completed (api/allow.py);
- HEAD is answered wherever GET is (RFC 9110 9.3.2): the request goes to the GET handler, whose
  status and headers are sent and whose body is not: the response ends with its headers, and the
  handler then hears the client gone (``http.disconnect``), so a stream (the SSE route) stops at once.
  Before, the response ended only with the handler's first body message, which a stream sends with its
  first event or keep-alive (15 s): the connection's next request waited that long.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any, cast

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client.metrics import Counter, Histogram

from api.allow import correct_allow_header
from infra.runtime.logs import request_id_var
from infra.runtime.metrics import HTTP_LATENCY, HTTP_REQUESTS

SANE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
RESPONSE_HEADERS = "response_headers"  # scope["state"] key: (name, value) byte pairs for the response


def random_uuid() -> str:
    """A random UUID (version 4) in its usual text form, as ``str(uuid.uuid4())``: os.urandom and slicing
    take ~4 us here, ``uuid.uuid4()`` ~17 us (timeit, shared machine). Request ids, and the new ids of
    commands and aggregates (three on every ingest)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


LOGIN_PATH = "/api/v1/auth/login"
LOGIN_QUERY = "login_query"  # the request state key of a login's query string (edge_middleware)


def edge_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        method = str(scope.get("method", ""))
        head = method == "HEAD"
        if head:  # a copy: the server keeps its own scope, so it still knows to send no body
            scope = cast("Scope", {**scope, "method": "GET"})
        head_sent = asyncio.Event() if head else None  # set once a HEAD's empty body went out
        # latin-1 decodes any bytes: a non-UTF-8 id is merely not sane, and replaced like any other.
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = incoming if SANE_ID.match(incoming) else random_uuid()
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        if scope.get("query_string") and scope.get("path") == LOGIN_PATH:
            # Credentials sent the spec's way, as query parameters (api/rest/auth.py): out of the scope
            # before anything records the query string (tracing's http.target), read from the state.
            state[LOGIN_QUERY] = scope["query_string"]
            scope["query_string"] = b""
        request_id_var.set(request_id)  # for every log line written while this request is served
        id_header = (b"x-request-id", request_id.encode())
        status = 500  # unless a response starts

        async def send_wrapped(message: Message) -> None:
            nonlocal status
            if head and message["type"] == "http.response.body":
                return  # the response ended with its headers (below)
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.extend(state.get(RESPONSE_HEADERS, ()))
                headers.append(id_header)
                message["headers"] = headers
                if method == "OPTIONS":
                    await correct_allow_header(message, scope)
            await send(message)
            if head_sent is not None and message["type"] == "http.response.start":
                # A HEAD ends with its headers, without waiting for the handler's first body message
                # (a stream's may come only with its first event or keep-alive).
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                head_sent.set()

        try:
            await app(scope, receive if head_sent is None else _ends_after_body(receive, head_sent), send_wrapped)
        finally:
            counter, latency = _series(method, str(scope.get("path_template") or "unmatched"), status)
            counter.inc()
            latency.observe(time.perf_counter() - started)

    return middleware


def _ends_after_body(receive: Receive, body_sent: asyncio.Event) -> Receive:
    """A HEAD request's ``receive``: ``http.disconnect`` as soon as its (empty) body has been sent, so a
    streaming handler, which listens for the disconnect, stops instead of writing on unseen."""

    async def receive_until_body_sent() -> Message:
        if body_sent.is_set():
            return {"type": "http.disconnect"}
        received = asyncio.ensure_future(receive())
        sent = asyncio.ensure_future(body_sent.wait())
        await asyncio.wait({received, sent}, return_when=asyncio.FIRST_COMPLETED)
        sent.cancel()
        if received.done():
            return cast("Message", received.result())
        received.cancel()
        return {"type": "http.disconnect"}

    return cast("Receive", receive_until_body_sent)


def _series(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    """The request counter and latency histogram of these labels (looked up once: ``labels`` checks
    and locks on every call). Methods, route templates and statuses are few, so this stays small."""
    key = (method, route, status)
    series = _SERIES.get(key)
    if series is None:
        series = _SERIES[key] = (HTTP_REQUESTS.labels(method, route, str(status)), HTTP_LATENCY.labels(method, route))
    return series


_SERIES: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
