"""Roles, permissions (the spec's table, exactly) and the litestar guards that check them.

Guards check the role's permission only. Whether the caller may touch one particular object is a
domain rule (commands/data.py: owner or admin), and what a caller may read is ``can_see``.

Visibility rule: a data object is visible to its owner and to admins only. Anyone else gets 404,
not 403, so object ids cannot be probed. Deleting needs ``write`` on one's own objects; the
``delete`` permission (admins) covers everyone's objects, which the domain allows admins anyway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"
    VIEWER = "viewer"


class Permission(StrEnum):
    READ = "read"
    WRITE = "write"
    DELETE = "delete"
    EXECUTE = "execute"
    ADMIN = "admin"


ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.USER: frozenset({Permission.READ, Permission.WRITE, Permission.EXECUTE}),
    Role.VIEWER: frozenset({Permission.READ}),
}

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]


def has_permission(role: str, permission: Permission) -> bool:
    """Does ``role`` grant ``permission``? Unknown roles grant nothing."""
    return permission in ROLE_PERMISSIONS.get(role, frozenset())


def can_see(role: str, user_id: str, owner: str) -> bool:
    """The visibility rule for data objects: the owner and admins."""
    return role == Role.ADMIN or user_id == owner


def requires(permission: Permission) -> Guard:
    """A guard: 401 without a caller, 403 when the caller's role lacks ``permission``."""

    # async on purpose: litestar runs a sync guard in a worker thread, a thread hop per request
    # (seen in py-spy profiles of the ingest benchmark).
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = connection.scope.get("user")
        role = getattr(principal, "role", None)
        if role is None:
            raise NotAuthorizedException("authentication required", headers={"WWW-Authenticate": "Bearer"})
        if not has_permission(role, permission):
            raise PermissionDeniedException(f"the {role} role lacks the {permission} permission")

    guard.__name__ = f"requires_{permission}"
    return guard
