"""REST: user administration (admin only). Rules (who may, unique names) live in commands/users.py."""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import partial
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from api.commands import submit, wait_for_position
from api.errors import ApiError
from api.rbac import Permission, requires
from api.rest.paging import MAX_OFFSET
from commands.envelope import Outcome
from domain.user import user_id_for
from infra.adapters.credentials import MAX_PASSWORD, MIN_PASSWORD
from infra.runtime.accounts import change_user, seat_if_admin
from infra.runtime.bootstrap import ApiContainer
from projections.users import get_user, list_users

RoleName = Literal["admin", "user", "viewer"]


class UserCreate(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$")]
    password: Annotated[str, msgspec.Meta(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)]
    role: RoleName = "user"


class UserUpdate(msgspec.Struct, forbid_unknown_fields=True):
    role: RoleName | None = None
    disabled: bool | None = None


class User(msgspec.Struct):
    user_id: str
    username: str
    role: str
    disabled: bool
    version: int
    created_at: datetime
    updated_at: datetime


async def _send(
    request: Request[Any, Any, Any], container: ApiContainer, command: str, aggregate_id: str, payload: dict[str, Any]
) -> Outcome:
    """A command as the caller: a refusal raises its error envelope."""
    return await submit(request, container, command, aggregate_id, payload)


def _user(row: dict[str, Any]) -> User:
    return User(**{k: v for k, v in row.items() if k not in ("credential_id", "token_generation")})


async def _row(container: ApiContainer, user_id: str) -> dict[str, Any]:
    async with container.pool.connection() as conn:
        row = await get_user(conn, user_id)
    if row is None:
        raise ApiError(404, "not_found", f"user {user_id} does not exist")
    return row


class UsersController(Controller):
    path = "/api/v1/users"
    tags = ["users"]
    opt = requires(Permission.ADMIN)

    @get("/", operation_id="listUsers", summary="List users")
    async def list(
        self,
        container: NamedDependency[ApiContainer],
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> list[User]:
        async with container.pool.connection() as conn:
            return [_user(r) for r in await list_users(conn, limit, offset)]

    @post("/", operation_id="createUser", status_code=201, summary="Create a user")
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[UserCreate], container: NamedDependency[ApiContainer]
    ) -> User:
        user_id = str(user_id_for(data.username))
        credential_id = await container.credentials.create(user_id, data.password)
        payload = {"username": data.username, "role": data.role, "credential_id": credential_id}
        outcome = await submit(request, container, "RegisterUser", user_id, payload)
        await wait_for_position(container, outcome)
        await seat_if_admin(container, partial(_send, request), user_id)
        return _user(await _row(container, user_id))

    @patch("/{user_id:uuid}", operation_id="updateUser", summary="Change a user's role or disable/enable them")
    async def update(
        self,
        request: Request[Any, Any, Any],
        user_id: FromPath[uuid.UUID],
        data: JSONBody[UserUpdate],
        container: NamedDependency[ApiContainer],
    ) -> User:
        # litestar converts bodies laxly (0 -> false, "true" -> true); a flag that disables accounts
        # takes JSON booleans only, as the schema says.
        try:
            data = msgspec.json.decode(await request.body(), type=UserUpdate)
        except msgspec.ValidationError as exc:
            raise ApiError(400, "validation_error", str(exc)) from exc
        target = str(user_id)
        # The admin roster decides whether an admin may stop being one (infra/runtime/accounts.py).
        await change_user(container, partial(_send, request), target, data.role, data.disabled)
        return _user(await _row(container, target))
