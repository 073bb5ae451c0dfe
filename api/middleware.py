"""Request ids: every request gets one (or keeps a sane incoming one), every response carries it."""

from __future__ import annotations

import os
import re
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from infra.runtime.logs import request_id_var

SANE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        # latin-1 decodes any bytes: a non-UTF-8 id is merely not sane, and replaced like any other.
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = incoming if SANE_ID.match(incoming) else os.urandom(16).hex()  # as random as uuid4().hex, cheaper
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        request_id_var.set(request_id)  # for every log line written while this request is served

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        await app(scope, receive, send_with_id)

    return middleware
