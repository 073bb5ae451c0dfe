"""REST: login, refresh, logout (public, rate-limited per client IP) and who-am-I."""

from __future__ import annotations

import contextlib
import logging
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from redis.exceptions import RedisError

from api.auth import principal_of, rate_limit_of
from api.commands import submit, wait_for_position
from api.errors import ApiError
from api.tokens import InvalidToken, RefreshTokens, decode_access_token, issue_access_token
from commands.limits import NO_CONTROL
from infra.bootstrap import ApiContainer
from infra.credentials import MAX_PASSWORD, MIN_PASSWORD
from projections.users import get_user, get_user_by_name

log = logging.getLogger("pipeline.auth")
PUBLIC = {"public": True}


class LoginRequest(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NO_CONTROL)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PASSWORD)]


class RefreshRequest(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class PasswordChange(msgspec.Struct, forbid_unknown_fields=True):
    current_password: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PASSWORD)]
    new_password: Annotated[str, msgspec.Meta(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)]


class TokenResponse(msgspec.Struct):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int


class Quota(msgspec.Struct):
    limit: int
    remaining: int
    reset_in: int


class Me(msgspec.Struct):
    user_id: str
    username: str
    role: str
    rate_limit: Quota | None


def _bad_credentials() -> ApiError:
    return ApiError(401, "unauthorized", "incorrect username or password")


def _token_store_down(exc: Exception) -> ApiError:
    log.warning("refresh token store unavailable: %s", exc)
    return ApiError(503, "unavailable", "the token store is unavailable; retry shortly")


class AuthController(Controller):
    path = "/api/v1/auth"
    tags = ["auth"]

    @post("/login", operation_id="login", status_code=200, opt=PUBLIC, summary="Log in with username and password")
    async def login(self, data: LoginRequest, container: ApiContainer, state: State) -> TokenResponse:
        async with container.pool.connection() as conn:
            user = await get_user_by_name(conn, data.username)
        ok = await container.credentials.verify(
            user["user_id"] if user else None, user["credential_id"] if user else None, data.password
        )
        if user is None or not ok or user["disabled"]:
            raise _bad_credentials()
        return await _tokens(container, state.refresh_tokens, user["user_id"], user["role"])

    @post("/refresh", operation_id="refresh", status_code=200, opt=PUBLIC, summary="Rotate a refresh token")
    async def refresh(self, data: RefreshRequest, container: ApiContainer, state: State) -> TokenResponse:
        store: RefreshTokens = state.refresh_tokens
        try:
            result = await store.rotate(data.refresh_token)
        except RedisError as exc:
            raise _token_store_down(exc) from exc
        if result.status == "reused":
            log.warning("refresh token of user %s reused: its family is revoked", result.user_id)
        if result.status != "rotated" or result.user_id is None or result.token is None:
            raise ApiError(401, "unauthorized", "the refresh token is invalid, expired or revoked")
        async with container.pool.connection() as conn:
            user = await get_user(conn, result.user_id)
        if user is None or user["disabled"]:
            await store.revoke(result.token)
            raise ApiError(401, "unauthorized", "the user is unknown or disabled")
        access, lifetime = issue_access_token(container.settings, user["user_id"], user["role"])
        return TokenResponse(access, result.token, "bearer", lifetime)

    @post(
        "/logout",
        operation_id="logout",
        status_code=204,
        opt=PUBLIC,
        summary="Revoke a refresh token (and the access token sent as Bearer, if any)",
    )
    async def logout(
        self, request: Request[Any, Any, Any], data: RefreshRequest, container: ApiContainer, state: State
    ) -> None:
        store: RefreshTokens = state.refresh_tokens
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            if scheme.lower() == "bearer" and token:
                with contextlib.suppress(InvalidToken):
                    claims = decode_access_token(container.settings, token.strip())
                    await store.revoke_access(str(claims["jti"]), int(claims["exp"]))
            await store.revoke(data.refresh_token)
        except RedisError as exc:
            raise _token_store_down(exc) from exc

    @get("/me", operation_id="me", summary="The caller, and their remaining rate-limit quota")
    async def me(self, request: Request[Any, Any, Any]) -> Response[Me]:
        principal = principal_of(request)
        verdict = rate_limit_of(request)
        quota = Quota(verdict.limit, verdict.remaining, verdict.reset) if verdict else None
        return Response(Me(principal.user_id, principal.username, principal.role, quota))

    @post("/password", operation_id="changePassword", status_code=204, summary="Change the caller's password")
    async def change_password(
        self, request: Request[Any, Any, Any], data: PasswordChange, container: ApiContainer, state: State
    ) -> None:
        """Needs the current password; ends every refresh token of the caller (other sessions too)."""
        principal = principal_of(request)
        async with container.pool.connection() as conn:
            user = await get_user(conn, principal.user_id)
        ok = user is not None and await container.credentials.verify(
            user["user_id"], user["credential_id"], data.current_password
        )
        if not ok:
            raise ApiError(403, "forbidden", "the current password is not correct")
        credential_id = await container.credentials.create(principal.user_id, data.new_password)
        payload = {"credential_id": credential_id}
        outcome = await submit(request, container, "ChangePassword", principal.user_id, payload)
        await wait_for_position(container, outcome)
        try:
            await state.refresh_tokens.revoke_user(principal.user_id)
        except RedisError as exc:
            raise _token_store_down(exc) from exc


async def _tokens(container: ApiContainer, store: RefreshTokens, user_id: str, role: str) -> TokenResponse:
    access, lifetime = issue_access_token(container.settings, user_id, role)
    try:
        refresh = await store.issue(user_id)
    except RedisError as exc:
        raise _token_store_down(exc) from exc
    return TokenResponse(access, refresh, "bearer", lifetime)
