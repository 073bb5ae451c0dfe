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
  status and headers are sent and whose body is not (a stream, e.g. the SSE route, ends with the
  headers: the server then reports the client gone).
"""

from __future__ import annotations

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
        body_sent = False
        # latin-1 decodes any bytes: a non-UTF-8 id is merely not sane, and replaced like any other.
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = incoming if SANE_ID.match(incoming) else os.urandom(16).hex()  # as random as uuid4().hex, cheaper
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        request_id_var.set(request_id)  # for every log line written while this request is served
        id_header = (b"x-request-id", request_id.encode())
        status = 500  # unless a response starts

        async def send_wrapped(message: Message) -> None:
            nonlocal status, body_sent
            if head and message["type"] == "http.response.body":
                if body_sent:
                    return
                body_sent = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.extend(state.get(RESPONSE_HEADERS, ()))
                headers.append(id_header)
                message["headers"] = headers
                if method == "OPTIONS":
                    await correct_allow_header(message, scope)
            await send(message)

        try:
            await app(scope, receive, send_wrapped)
        finally:
            counter, latency = _series(method, str(scope.get("path_template") or "unmatched"), status)
            counter.inc()
            latency.observe(time.perf_counter() - started)

    return middleware


def _series(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    """The request counter and latency histogram of these labels (looked up once: ``labels`` checks
    and locks on every call). Methods, route templates and statuses are few, so this stays small."""
    key = (method, route, status)
    series = _SERIES.get(key)
    if series is None:
        series = _SERIES[key] = (HTTP_REQUESTS.labels(method, route, str(status)), HTTP_LATENCY.labels(method, route))
    return series


_SERIES: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
