"""Expected failures of a use case, as GraphQL errors carrying the REST envelope's fields."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from graphql import GraphQLError

from api.errors import ApiError
from infra.command_bus import CommandTimeout

T = TypeVar("T")


async def answer(call: Awaitable[T]) -> T:
    """Run a use case; ApiError and CommandTimeout become GraphQL errors with code/reason/details."""
    try:
        return await call
    except ApiError as exc:
        extensions = {"code": exc.status, "reason": exc.reason, "details": exc.details}
        raise GraphQLError(exc.message, extensions=extensions) from exc
    except CommandTimeout as exc:
        extensions = {"code": 504, "reason": "command_timeout", "details": {"command_id": str(exc)}}
        raise GraphQLError("the command's outcome did not arrive in time", extensions=extensions) from exc
