"""Roles, permissions (the spec's table, exactly) and the routes' permission requirements.

A route's requirement checks the role's permission only. Whether the caller may touch one particular object is a
domain rule (commands/data.py: owner or admin), and what a caller may read is ``can_see``.

Visibility rule: a data object is visible to its owner and to admins only. Anyone else gets 404,
not 403, so object ids cannot be probed. Deleting needs ``write`` on one's own objects; the
``delete`` permission (admins) covers everyone's objects, which the domain allows admins anyway.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from litestar.exceptions import NotAuthorizedException, PermissionDeniedException


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

PERMISSION = "permission"  # the route opt naming the permission a caller's role needs (``requires``)


def has_permission(role: str, permission: Permission) -> bool:
    """Does ``role`` grant ``permission``? Unknown roles grant nothing."""
    return permission in ROLE_PERMISSIONS.get(role, frozenset())


def can_see(role: str, user_id: str, owner: str) -> bool:
    """The visibility rule for data objects: the owner and admins."""
    return role == Role.ADMIN or user_id == owner


def requires(permission: Permission) -> dict[str, Any]:
    """A route's (or controller's) ``opt``: its callers' role must grant ``permission``.

    The auth middleware (api/auth.py) checks it once it knows the caller, with ``check_permission``:
    not a litestar guard, which litestar calls with a copy of the route handler on every request (4%
    of the API's CPU on reads by id, py-spy).
    """
    return {PERMISSION: permission}


def check_permission(role: str | None, permission: Permission | None) -> None:
    """401 without a caller, 403 when the caller's role lacks ``permission`` (None: nothing needed)."""
    if permission is None:
        return
    if role is None:
        raise NotAuthorizedException("authentication required", headers={"WWW-Authenticate": "Bearer"})
    if not has_permission(role, permission):  # the spec's require_permission message, the cause in details
        cause = f"the {role} role lacks the {permission} permission"
        raise PermissionDeniedException("Insufficient permissions", extra={"cause": cause})
