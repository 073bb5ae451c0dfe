"""Who is calling: bearer-token authentication, rate limiting and route permissions, in one ASGI middleware.

Every route needs a valid access token except those marked ``opt={"public": True}`` (login,
refresh, logout) and health, docs and metrics. A token is honoured only if it verifies (HS256,
unexpired, with ``sub``) AND its user still exists and is enabled in the users read model: one
primary-key lookup per request (cached: api/user_cache.py), so disabling a user ends their tokens at
once and a role change applies to the next request (the role comes from the read model, not from
the token). A token issued before the user's last password change (its ``gen`` claim is below the
user's token generation, from the same row) is refused: a password change ends every other session.
A token whose ``jti`` was revoked by logout is refused too: known in memory (api/revocations.py), or,
while this process cannot tell, looked up in the rate limiter's one round trip to Redis (also when
limiting is off; skipped while Redis is down).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode
from uuid import UUID

import orjson
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from psycopg import Error as PostgresError

from api.errors import ApiError, refuse_websocket
from api.middleware import RESPONSE_HEADERS
from api.ratelimit import RateLimiter, Verdict
from api.rbac import PERMISSION, check_permission
from api.revocations import RevokedTokens
from api.tokens import InvalidToken, decode_access_token
from api.user_cache import UserCache
from api.ws_auth import Verify, defers_to_connection_init, init_authenticating_receive
from api.ws_expiry import expiring_receive
from api.ws_limits import UserConnections
from commands.envelope import Actor
from infra.runtime.bootstrap import ApiContainer
from infra.runtime.logs import actor_var
from infra.runtime.metrics import RATE_LIMIT_REFUSALS

log = logging.getLogger("pipeline.auth")
OPEN_PATHS = ("/health", "/ready")  # the metrics route is open by its opt, at monitoring.metrics_path
OPEN_PREFIXES = ("/api/docs", "/api/redoc", "/schema")
GRAPHQL_PATH = "/api/graphql"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller, as litestar's ``connection.user``."""

    user_id: str
    username: str
    role: str
    token_id: str
    token_generation: int = 0  # live connections end when the user's generation passes it
    expires_at: float = math.inf  # the token's ``exp``: a WebSocket opened with it ends then (api/ws_expiry.py)


def principal_of(request: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The caller of a protected route (401 if the route was somehow reached without one)."""
    principal = request.scope.get("user")
    if not isinstance(principal, Principal):
        raise ApiError(401, "unauthorized", "authentication required")
    return principal


def actor_of(request: ASGIConnection[Any, Any, Any, Any]) -> Actor:
    """The caller as the command envelope records it."""
    principal = principal_of(request)
    return Actor(user_id=principal.user_id, role=principal.role)


def rate_limit_of(request: Request[Any, Any, Any]) -> Verdict | None:
    """The rate-limit verdict of this request (for ``/auth/me``)."""
    verdict = request.scope.get("state", {}).get("rate_limit")
    return verdict if isinstance(verdict, Verdict) else None


def auth_middleware(app: ASGIApp) -> ASGIApp:
    """Authenticate, then rate-limit, then call the route; RateLimit-* headers go on the response."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or _is_open(scope):
            await app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            # Authenticated once: at the handshake (header or ?access_token=), or, for GraphQL clients
            # (browsers cannot set headers on a WebSocket), by the connection_init payload (api/ws_auth.py).
            ws_state = scope["litestar_app"].state
            ws_token = handshake_token(scope)  # read once: it removes ?access_token= from the scope
            slots: UserConnections = ws_state.user_connections
            taken: list[str] = []  # the user whose connection slot this connection holds

            def admit(principal: Principal) -> bool:
                if slots.acquire(principal.user_id):
                    taken.append(principal.user_id)
                    return True
                return False

            try:
                if not ws_token and defers_to_connection_init(scope):
                    verify = _init_verifier(ws_state.container, ws_state.revoked_tokens, ws_state.users)
                    authenticating = init_authenticating_receive(scope, receive, send, verify, admit)
                    await app(scope, expiring_receive(scope, authenticating, send), send)
                    return
                ws_principal = await _authenticate(
                    scope, send, ws_state.container, ws_state.revoked_tokens, ws_state.users, ws_token
                )
                if ws_principal is None:
                    return
                if not admit(ws_principal):
                    message = "too many open connections for this user (websocket.max_connections_per_user)"
                    await refuse_websocket(scope, send, 429, "too_many_connections", message)
                    return
                scope["user"] = ws_principal
                actor_var.set(f"{ws_principal.username}({ws_principal.role})")
                await app(scope, expiring_receive(scope, receive, send), send)
            finally:
                for user_id in taken:
                    slots.release(user_id)
            return
        state = scope["litestar_app"].state
        container: ApiContainer = state.container
        limiter: RateLimiter = state.limiter
        handler = scope.get("route_handler")
        opt = handler.opt if handler is not None else {}
        if opt.get("public"):
            client = scope.get("client")
            verdict = await limiter.hit(None, client[0] if client else "unknown")
        else:
            principal = await _authenticate(scope, send, container, None, state.users, handshake_token(scope))
            if principal is None:
                return
            # Logout revocations: known in memory, or else looked up by the limiter, in its round trip to Redis.
            revocations: RevokedTokens = state.revoked_tokens
            revoked = revocations.known(principal.token_id)
            if revoked:
                await _unauthorized(scope, send, "the token is invalid or expired", 'error="invalid_token"')
                return
            verdict = await limiter.hit(
                principal.role,
                principal.user_id,
                burst=bool(opt.get("burst")),
                veto=revocations.key(principal.token_id) if revoked is None else None,
            )
            if verdict.vetoed:
                await _unauthorized(scope, send, "the token is invalid or expired", 'error="invalid_token"')
                return
            scope["user"] = principal
            actor_var.set(f"{principal.username}({principal.role})")  # named by each log line of the request
        request_state = scope.setdefault("state", {})
        request_state["rate_limit"] = verdict
        if not verdict.allowed:
            RATE_LIMIT_REFUSALS.labels(getattr(scope.get("user"), "role", "anonymous")).inc()
            await _error(scope, send, 429, "rate_limited", "rate limit exceeded; retry later", verdict.headers())
            return
        request_state[RESPONSE_HEADERS] = verdict.raw_headers  # put on the response by api/middleware.py
        # The route's permission (api/rbac.py), once the caller is known and counted: 401/403 envelopes
        # from litestar's exception handlers, with the RateLimit-* headers, as from a guard.
        check_permission(getattr(scope.get("user"), "role", None), opt.get(PERMISSION))
        await app(scope, receive, send)

    return middleware


def _is_open(scope: Scope) -> bool:
    path: str = scope.get("path", "")
    handler = scope.get("route_handler")
    return (
        path in OPEN_PATHS
        or path.startswith(OPEN_PREFIXES)
        or scope.get("method") == "OPTIONS"
        or (handler is not None and bool(handler.opt.get("open")))  # e.g. the metrics route, at its set path
        or _is_graphql_ide(scope, path)
    )


def _is_graphql_ide(scope: Scope, path: str) -> bool:
    """GET /api/graphql without a query is the IDE's page: a browser cannot send a token to open it.

    Every operation still needs one (the IDE lets the user set the Authorization header): a GET with a
    ``query`` parameter is not open.
    """
    if path != GRAPHQL_PATH or scope.get("method") != "GET":
        return False
    return "query" not in parse_qs(scope.get("query_string", b"").decode("latin-1"))


class Refused(Exception):
    """A token that does not authenticate: the HTTP status, message and WWW-Authenticate parameters."""

    def __init__(self, status: int, message: str, params: str = 'error="invalid_token"') -> None:
        super().__init__(message)
        self.status, self.message, self.params = status, message, params


def handshake_token(scope: Scope) -> str:
    """The bearer token of the request's Authorization header or (WebSockets only) ``?access_token=``.

    The query-string token is removed from the scope once read, so nothing downstream logs it
    (uvicorn logs a WebSocket's path and query string when it accepts the handshake).
    """
    header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
    if not header and scope["type"] == "websocket":
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if "access_token" in query:
            header = f"Bearer {query.pop('access_token')[0]}"
            scope["query_string"] = urlencode(query, doseq=True).encode("latin-1")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def verify_token(
    container: ApiContainer, revocations: RevokedTokens | None, users: UserCache, token: str
) -> Principal:
    """The caller a bearer token names, if it still authenticates; Refused otherwise."""
    if not token:
        raise Refused(401, "a bearer token is required", "")
    try:
        claims = decode_access_token(container.settings, token)
    except InvalidToken as exc:
        log.info("refused token: %s", exc)
        raise Refused(401, "the token is invalid or expired") from exc
    try:
        user_id = str(UUID(claims["sub"]))
        if revocations is not None and await revocations.revoked(str(claims["jti"])):
            raise ValueError("revoked by logout")
    except ValueError as exc:
        raise Refused(401, "the token is invalid or expired") from exc
    try:
        row = await users.get(user_id)
    except PostgresError as exc:
        log.exception("user lookup failed")
        raise Refused(503, "cannot check the token right now; retry") from exc
    if row is None or row.disabled:
        raise Refused(401, "the user is unknown or disabled")
    if claims["gen"] < row.token_generation:
        raise Refused(401, "the password changed since this token was issued")
    return Principal(user_id, row.username, row.role, str(claims["jti"]), claims["gen"], float(claims["exp"]))


def _init_verifier(container: ApiContainer, revocations: RevokedTokens | None, users: UserCache) -> Verify:
    async def verify(token: str) -> Principal | None:
        try:
            return await verify_token(container, revocations, users, token)
        except Refused as refused:
            log.info("refused a connection_init token: %s", refused.message)
            return None

    return verify


async def _authenticate(
    scope: Scope, send: Send, container: ApiContainer, revocations: RevokedTokens | None, users: UserCache, token: str
) -> Principal | None:
    try:
        return await verify_token(container, revocations, users, token)
    except Refused as refused:
        if refused.status == 503:
            await _error(scope, send, 503, "unavailable", refused.message, {"Retry-After": "1"})
        else:
            await _unauthorized(scope, send, refused.message, refused.params)
        return None


async def _unauthorized(scope: Scope, send: Send, cause: str, params: str) -> None:
    """401 with a challenge; a token that was sent and refused (``params`` set) answers the spec's
    ``get_current_user`` message, "Could not validate credentials", with the cause in ``details``."""
    challenge = f"Bearer {params}".strip()
    message, details = (SPEC_REFUSAL, {"cause": cause}) if params else (cause, None)
    await _error(scope, send, 401, "unauthorized", message, {"WWW-Authenticate": challenge}, details)


SPEC_REFUSAL = "Could not validate credentials"


async def _error(
    scope: Scope,
    send: Send,
    status: int,
    reason: str,
    message: str,
    headers: dict[str, str],
    details: Any = None,
) -> None:
    """The spec's error envelope, written straight to ASGI (the route never ran)."""
    if scope["type"] == "websocket":  # before the handshake is accepted: the same status and envelope
        await refuse_websocket(scope, send, status, reason, message, details, headers)
        return
    request_id = scope.get("state", {}).get("request_id")
    body = orjson.dumps(
        {"error": {"code": status, "reason": reason, "message": message, "details": details, "request_id": request_id}}
    )
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    start: Message = {"type": "http.response.start", "status": status, "headers": raw}
    await send(start)
    end: Message = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)
