"""Expected failures of a use case, as GraphQL errors carrying the REST envelope's fields."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec
from graphql import GraphQLError
from litestar.connection import ASGIConnection

from api.errors import ApiError
from api.inputs import parse
from api.rbac import Permission, has_permission
from infra.adapters.command_bus import CommandTimeout

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)


async def answer(call: Awaitable[T]) -> T:
    """Run a use case; ApiError and CommandTimeout become GraphQL errors with code/reason/details."""
    try:
        return await call
    except ApiError as exc:
        raise to_graphql(exc) from exc
    except CommandTimeout as exc:
        extensions = {"code": 504, "reason": "command_timeout", "details": {"command_id": str(exc)}}
        raise GraphQLError("the command's outcome did not arrive in time", extensions=extensions) from exc


def to_graphql(exc: ApiError) -> GraphQLError:
    """The GraphQL error for an ApiError, with the envelope's code, reason and details."""
    return GraphQLError(exc.message, extensions={"code": exc.status, "reason": exc.reason, "details": exc.details})


def parsed(struct: type[S], **fields: Any) -> S:
    """Arguments as the REST body struct, validated by the same rules (a 400 GraphQL error otherwise)."""
    try:
        return parse(struct, {name: value for name, value in fields.items() if value is not None})
    except ApiError as exc:
        raise to_graphql(exc) from exc


def check_page(limit: int, offset: int, max_limit: int, max_offset: int) -> None:
    """``limit`` 1..max_limit and ``offset`` 0..max_offset, else a 400 naming the field (as REST does)."""
    for field, value, low, high in (("limit", limit, 1, max_limit), ("offset", offset, 0, max_offset)):
        if not low <= value <= high:
            extensions = {"code": 400, "reason": "validation_error", "details": {"field": field}}
            raise GraphQLError(f"{field} must be {low}..{high}", extensions=extensions)


def require(connection: ASGIConnection[Any, Any, Any, Any], permission: Permission) -> None:
    """The REST routes' permission rule (api/rbac.py) for GraphQL: 401 without a caller, 403 without the permission."""
    principal = connection.scope.get("user")
    role = getattr(principal, "role", None)
    if role is None:
        raise GraphQLError("authentication required", extensions={"code": 401, "reason": "unauthorized"})
    if not has_permission(role, permission):
        raise GraphQLError(
            f"the {role} role lacks the {permission} permission", extensions={"code": 403, "reason": "forbidden"}
        )
