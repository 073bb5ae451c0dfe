"""Live connections re-check their caller on every change they deliver.

A WebSocket or a GraphQL subscription is authenticated once, at its handshake, but may stay open
for hours. Before delivering a change it asks the user cache again for the caller's current role,
disabled flag and token generation: a role change applies to the very next delivery
(``scope["user"]`` is updated, so every visibility check downstream sees it); a disabled or deleted
user's connection is closed, as is one opened with a token from before a password change, with a
token revoked since (logout) or with a token that has expired since (api/ws_expiry.py closes a
WebSocket at that moment; this catches streams that are not WebSockets, such as SSE). Cached
answers are cheap (a dict lookup); a change to the caller themselves (a ``User.*`` change in the
same feed message) or a truncated message forces a fresh read, so the disable that caused the
message is never judged by a row cached before it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from litestar.connection import ASGIConnection

from api.auth import Principal, principal_of
from api.revocations import RevokedTokens
from api.user_cache import UserCache, UserRow

POLICY_VIOLATION = 1008  # RFC 6455: the /ws close code for "you may no longer have this"
GRAPHQL_FORBIDDEN = 4403  # graphql-transport-ws: Forbidden


class AccessEnded(Exception):
    """The caller is disabled or no longer exists: the connection must end."""


def mentions_user(message: dict[str, Any], user_id: str) -> bool:
    """Does this feed message (maybe) change ``user_id``? A truncated message may hide such a change."""
    if message.get("truncated"):
        return True
    return any(c["type"].startswith("User.") and c["id"] == user_id for c in message.get("changes", []))


def changed_users(message: dict[str, Any]) -> set[str]:
    """The users a feed message changes."""
    return {c["id"] for c in message.get("changes", []) if c["type"].startswith("User.")}


async def current_row(users: UserCache, user_id: str, fresh: bool) -> UserRow | None:
    """The user's row now: from the cache, or re-read when ``fresh``. Raises psycopg errors."""
    if fresh:
        return await users.refresh(user_id)
    return await users.get(user_id)


def token_revoked(revocations: RevokedTokens, token_id: str) -> bool:
    """Was the connection's access token revoked (a logout)? From the process's mirror of the
    revocations only (no Redis round trip per delivery): a process that cannot tell says no."""
    return bool(token_id) and revocations.known(token_id) is True


async def recheck(connection: ASGIConnection[Any, Any, Any, Any], fresh: bool) -> Principal:
    """The connection's caller as they are now (``scope["user"]`` updated); AccessEnded if disabled."""
    principal = principal_of(connection)
    users: UserCache = connection.app.state.users
    row = await current_row(users, principal.user_id, fresh)
    if row is None or row.disabled:
        raise AccessEnded(f"user {principal.user_id} is disabled or no longer exists")
    if row.token_generation > principal.token_generation:
        raise AccessEnded(f"the password of user {principal.user_id} changed since this connection began")
    if token_revoked(connection.app.state.revoked_tokens, principal.token_id):
        raise AccessEnded("the token this connection was opened with was revoked (logout)")
    if principal.expires_at <= time.time():
        raise AccessEnded("the token this connection was opened with expired")
    if row[1] != principal.role:
        principal = dataclasses.replace(principal, role=row[1])
        connection.scope["user"] = principal
    return principal
