"""Who is calling. Until login and tokens land (issue #3) every caller is the anonymous user."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection

from commands.envelope import Actor

ANONYMOUS = Actor(user_id="anonymous", role="user")


def actor_of(request: ASGIConnection[Any, Any, Any, Any]) -> Actor:
    return ANONYMOUS
