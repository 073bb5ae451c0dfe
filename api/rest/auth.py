"""REST: login, refresh, logout (public, rate-limited per client IP) and who-am-I."""

from __future__ import annotations

import contextlib
import logging
from typing import Annotated, Any
from urllib.parse import parse_qsl

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody
from redis.exceptions import RedisError

from api.auth import principal_of, rate_limit_of
from api.commands import submit, wait_for_position
from api.errors import ApiError
from api.inputs import parse
from api.login_throttle import LoginThrottle
from api.middleware import LOGIN_QUERY
from api.tokens import InvalidToken, RefreshTokens, decode_access_token, generation_of, issue_access_token
from commands.limits import NO_CONTROL
from infra.adapters.credentials import MAX_PASSWORD, MIN_PASSWORD
from infra.runtime.bootstrap import ApiContainer
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
    return ApiError(401, "unauthorized", "Incorrect username or password")  # the spec's words


def _token_store_down(exc: Exception) -> ApiError:
    log.warning("refresh token store unavailable: %s", exc)
    return ApiError(503, "unavailable", "the token store is unavailable; retry shortly")


class AuthController(Controller):
    path = "/api/v1/auth"
    tags = ["auth"]

    @post(
        "/login",
        operation_id="login",
        status_code=200,
        opt={**PUBLIC, "body_or_query": LoginRequest},  # api/openapi.py documents both forms
        summary="Log in with username and password",
    )
    async def login(
        self,
        request: Request[Any, Any, Any],
        container: NamedDependency[ApiContainer],
        state: State,
        data: JSONBody[LoginRequest | None] = None,
    ) -> TokenResponse:
        """Failed logins are throttled per username and per client IP (429 with Retry-After).

        The credentials are the JSON body, or (the spec's ``login(username, password)``, which FastAPI
        reads from the query string) ``?username=&password=`` when there is no body.
        """
        if data is None:  # the query string was set aside by api.middleware.edge_middleware
            query = request.scope.get("state", {}).get(LOGIN_QUERY, b"").decode("latin-1")
            data = parse(LoginRequest, dict(parse_qsl(query, keep_blank_values=True, encoding="utf-8")))
        throttle: LoginThrottle = state.login_throttle
        ip = request.client.host if request.client else "unknown"
        try:
            wait = await throttle.wait_seconds(data.username, ip)
        except RedisError as exc:
            raise _token_store_down(exc) from exc
        if wait:
            raise ApiError(
                429,
                "rate_limited",
                "too many failed logins; retry later",
                {"retry_after": wait},
                {"Retry-After": str(wait)},
            )
        async with container.pool.connection() as conn:
            user = await get_user_by_name(conn, data.username)
        ok = await container.credentials.verify(
            user["user_id"] if user else None, user["credential_id"] if user else None, data.password
        )
        try:
            if user is None or not ok or user["disabled"]:
                await throttle.failed(data.username, ip)
                raise _bad_credentials()
            await throttle.succeeded(data.username)
        except RedisError as exc:
            raise _token_store_down(exc) from exc
        return await _tokens(container, state.refresh_tokens, user)

    @post("/refresh", operation_id="refresh", status_code=200, opt=PUBLIC, summary="Rotate a refresh token")
    async def refresh(
        self, data: JSONBody[RefreshRequest], container: NamedDependency[ApiContainer], state: State
    ) -> TokenResponse:
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
        issued_at = generation_of(result.token)
        if user is None or user["disabled"]:
            await store.revoke(result.token)
            raise ApiError(401, "unauthorized", "the user is unknown or disabled")
        if issued_at is not None and issued_at < user["token_generation"]:
            # Issued before a password change or a disable: ended with the tokens of its generation.
            await store.revoke(result.token)
            raise ApiError(401, "unauthorized", "the refresh token is invalid, expired or revoked")
        access, lifetime = issue_access_token(
            container.settings, user["user_id"], user["role"], user["token_generation"]
        )
        return TokenResponse(access, result.token, "bearer", lifetime)

    @post(
        "/logout",
        operation_id="logout",
        status_code=204,
        opt=PUBLIC,
        summary="Revoke a refresh token (and the access token sent as Bearer, if any)",
    )
    async def logout(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[RefreshRequest],
        container: NamedDependency[ApiContainer],
        state: State,
    ) -> None:
        store: RefreshTokens = state.refresh_tokens
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            if scheme.lower() == "bearer" and token:
                with contextlib.suppress(InvalidToken):
                    claims = decode_access_token(container.settings, token.strip())
                    await state.revoked_tokens.revoke(str(claims["jti"]), int(claims["exp"]))
            await store.revoke(data.refresh_token)
        except RedisError as exc:
            raise _token_store_down(exc) from exc

    @get("/me", operation_id="me", summary="The caller, and their remaining rate-limit quota")
    async def me(self, request: Request[Any, Any, Any]) -> Response[Me]:
        principal = principal_of(request)
        verdict = rate_limit_of(request)
        quota = Quota(verdict.limit, verdict.remaining, verdict.reset) if verdict else None
        return Response(Me(principal.user_id, principal.username, principal.role, quota))

    @post(
        "/password",
        operation_id="changePassword",
        status_code=200,
        summary="Change the caller's password; other sessions end, this one gets fresh tokens",
    )
    async def change_password(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[PasswordChange],
        container: NamedDependency[ApiContainer],
        state: State,
    ) -> TokenResponse:
        """Needs the current password. Every access and refresh token issued before stops working
        (the user's token generation grows), the caller's included; the answer carries new ones."""
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
        async with container.pool.connection() as conn:
            changed = await get_user(conn, principal.user_id)
        assert user is not None and changed is not None
        # The change raised the generation by one (even if the read model has not shown it yet).
        generation = max(user["token_generation"] + 1, changed["token_generation"])
        return await _tokens(container, state.refresh_tokens, {**changed, "token_generation": generation})


async def _tokens(container: ApiContainer, store: RefreshTokens, user: dict[str, Any]) -> TokenResponse:
    """A new login's tokens for a users read-model row."""
    access, lifetime = issue_access_token(container.settings, user["user_id"], user["role"], user["token_generation"])
    try:
        refresh = await store.issue(user["user_id"], user["token_generation"])
    except RedisError as exc:
        raise _token_store_down(exc) from exc
    return TokenResponse(access, refresh, "bearer", lifetime)
