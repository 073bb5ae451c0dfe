"""A bound on each read of a request body, which uvicorn does not have.

A client that sends headers promptly and then its body one byte a minute would hold a request, a
connection and its buffers for as long as it likes. This wrapper bounds every ``receive()`` of an
HTTP request body by ``server.body_timeout_seconds``: a read that waits longer fails the request
with 408 and the error envelope (an ApiError raised where the route reads its body, so litestar's
error table answers it). Once the body is complete, later ``receive()`` calls (which only wait for
a disconnect) are not bounded. WebSocket and lifespan traffic pass through untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from api.errors import ApiError


def body_timeout_middleware(seconds: float) -> Callable[[ASGIApp], ASGIApp]:
    """A litestar middleware factory bounding each body read by ``seconds`` (0 disables it)."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or seconds <= 0:
                await app(scope, receive, send)
                return
            body_done = False

            async def bounded_receive() -> ReceiveMessage:
                nonlocal body_done
                if body_done:
                    return await receive()
                try:
                    message = await asyncio.wait_for(receive(), seconds)
                except TimeoutError:
                    raise ApiError(
                        408,
                        "request_timeout",
                        f"the request body did not arrive in time (each read is limited to {seconds:g}s)",
                        headers={"Connection": "close"},
                    ) from None
                if message["type"] != "http.request" or not message.get("more_body", False):
                    body_done = True
                return message

            await app(scope, bounded_receive, send)

        return middleware

    return wrap
