"""One table from exceptions to the spec's error envelope: {"error": {code, message, details, request_id}}."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import orjson
import psycopg
import psycopg.errors
from aiokafka.errors import KafkaError
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, ValidationException
from psycopg_pool import PoolTimeout

from commands.envelope import Rejection
from commands.limits import InvalidInput
from infra.adapters.command_bus import CommandTimeout

log = logging.getLogger("pipeline.api")


class ApiError(Exception):
    """An expected failure with its HTTP status and a machine-readable reason."""

    def __init__(
        self, status: int, reason: str, message: str, details: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.details = status, reason, message, details
        self.headers = headers or {}  # e.g. Retry-After on a 429


# A refused command's code -> HTTP status.
REJECTION_STATUS = {
    "not_found": 404,
    "conflict": 409,
    "limit_reached": 409,  # e.g. an object's annotations (storage.max_annotations_per_object)
    "last_admin": 409,  # demoting or disabling the last enabled admin (domain/admin_roster.py)
    "gone": 410,
    "invalid": 422,
    "invalid_graph": 400,  # the spec: HTTPException(400, detail=validation.errors)
    "idempotency_mismatch": 422,
    "forbidden": 403,
    "too_large": 413,
    "internal": 500,
}


def rejection_error(rejection: Rejection) -> ApiError:
    return ApiError(REJECTION_STATUS.get(rejection.code, 400), rejection.code, rejection.message, rejection.details)


def request_id_of(request: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def envelope(
    request: Request[Any, Any, Any], status: int, reason: str, message: str, details: Any = None
) -> Response[Any]:
    body = {
        "error": {
            "code": status,
            "reason": reason,
            "message": message,
            "details": details,
            "request_id": request_id_of(request),
        }
    }
    headers = {"Retry-After": "1"} if status in (503, 504) else None
    if status == 401:  # RFC 6750: every 401 names the scheme to authenticate with
        headers = {"WWW-Authenticate": "Bearer"}
    return Response(body, status_code=status, headers=headers)


async def refuse_websocket(
    scope: Any,
    send: Any,
    status: int,
    reason: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> None:
    """Refuse a WebSocket handshake before accepting it: the HTTP status with the error envelope, as any
    request gets, where the server can send a response (the ASGI ``websocket.http.response`` extension,
    which uvicorn's websockets implementations offer); else a close with 4000 + status (1011 for a 5xx),
    which the server can only turn into a bare 403."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 4000 + status if status < 500 else 1011, "reason": message})
        return
    request_id = scope.get("state", {}).get("request_id") or str(uuid.uuid4())
    error = {"code": status, "reason": reason, "message": message, "details": details, "request_id": request_id}
    body = orjson.dumps({"error": error})
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    raw.append((b"x-request-id", request_id.encode()))
    await send({"type": "websocket.http.response.start", "status": status, "headers": raw})
    await send({"type": "websocket.http.response.body", "body": body})


def _api_error(request: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
    response = envelope(request, exc.status, exc.reason, exc.message, exc.details)
    response.headers.update(exc.headers)
    return response


HTTP_REASONS = {
    400: "validation_error",  # litestar's own 400s: an undecodable body (e.g. an integer beyond 64 bits)
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def http_reason(status: int) -> str:
    """The envelope's reason for a framework's HTTP error of this status."""
    return HTTP_REASONS.get(status, "http_error")


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if isinstance(exc, ValidationException):
        return envelope(request, 400, "validation_error", "the request is not valid", validation_details(request, exc))
    response = envelope(request, status, http_reason(status), exc.detail, exc.extra or None)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]{1,300})`")


def validation_details(request: Request[Any, Any, Any], exc: ValidationException) -> dict[str, Any]:
    """litestar's parameter and body errors as the envelope's details: ``field`` names the first bad
    one, as every other validation error does, and ``errors`` keeps each (message, key, source), each
    key the name the client sent (``query``, not the handler's ``search_query``)."""
    errors = [e for e in exc.extra if isinstance(e, dict)] if isinstance(exc.extra, list) else []
    if not errors:
        return {"field": None, "errors": [{"message": str(exc.detail)}]}
    for error in errors:
        error["key"] = _public_name(request, error.get("key"))
    first = errors[0]
    field = first.get("key")
    named = _NAMED_FIELD.search(str(first.get("message", "")))
    if named is not None:  # msgspec names the body ("data"), the message names the field
        field = named.group(1)
    return {"field": field, "source": first.get("source"), "errors": errors}


def _public_name(request: Request[Any, Any, Any], key: Any) -> Any:
    """The query parameter or header name a handler's argument ``key`` is bound to (else ``key``)."""
    handler = request.scope.get("route_handler")
    parameter = handler.parsed_fn_signature.parameters.get(key) if handler is not None and key else None
    definition = getattr(parameter, "kwarg_definition", None)
    for attribute in ("name", "query", "header"):  # QueryParameter(name=...) sets name
        if isinstance(public := getattr(definition, attribute, None), str):
            return public
    return key


def _timeout(request: Request[Any, Any, Any], exc: CommandTimeout) -> Response[Any]:
    return envelope(
        request,
        504,
        "command_timeout",
        "the command was accepted but its outcome did not arrive in time; retry with the same Idempotency-Key",
        {"command_id": str(exc)},
    )


def _invalid_input(request: Request[Any, Any, Any], exc: InvalidInput) -> Response[Any]:
    return envelope(request, 400, "validation_error", exc.message, {"field": exc.field})


def _undecodable(request: Request[Any, Any, Any], exc: UnicodeDecodeError) -> Response[Any]:
    # Raised while decoding a body (msgspec and the GraphQL view let it through as it is).
    return envelope(request, 400, "invalid_body", "the request body is not valid UTF-8")


def _too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    # Decoding a body nested ~1000 levels deep exhausts the stack before any validator runs.
    log.warning("too deeply nested input on %s %s", request.method, request.url.path, exc_info=exc)
    return envelope(request, 400, "validation_error", "the input is nested too deeply", {"field": "body"})


def _unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("dependency unavailable on %s %s: %r", request.method, request.url.path, exc)
    return envelope(request, 503, "unavailable", "a backing service is unavailable; retry shortly")


def _query_timeout(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("statement timeout on %s %s: %r", request.method, request.url.path, exc)
    return envelope(
        request, 503, "query_timeout", "the query took longer than database.statement_timeout_ms; retry shortly"
    )


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return envelope(request, 500, "internal_error", "Internal server error")  # the spec's words


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ApiError: _api_error,
    HTTPException: _http_error,
    CommandTimeout: _timeout,
    InvalidInput: _invalid_input,
    UnicodeDecodeError: _undecodable,
    RecursionError: _too_deep,
    KafkaError: _unavailable,
    psycopg.errors.QueryCanceled: _query_timeout,  # before OperationalError, its base
    psycopg.OperationalError: _unavailable,
    PoolTimeout: _unavailable,
    Exception: _unexpected,
}
