"""The OpenAPI document says what the API really answers: the error envelope, each error status, headers.

Litestar documents a 2xx and its own ``ValidationException`` shape for 400. Every error this API
sends is the envelope of ``api.errors`` (also from the auth middleware, which answers before any
route runs), so one pass over the finished document, driven by what each route is (public or not,
needing a permission, with path parameters, with a body, sending a command), adds the statuses it can answer,
their envelope schema and their headers. Schemathesis (tests/e2e/test_schemathesis.py) checks the
result against the running API.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.enums import ParamType
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    Schema,
)
from litestar.routes import HTTPRoute

from api.inputs import JSON_VALUE, JSON_VALUE_SCHEMA
from api.rbac import PERMISSION

ENVELOPE = "ErrorEnvelope"
_COMMAND_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_DESCRIPTIONS = {
    400: "The request is not valid (body, parameters or a field's value)",
    401: "No valid bearer token (the user may be unknown or disabled)",
    403: "The caller's role lacks the permission, or the object is not theirs to change",
    404: "No such resource visible to the caller",
    409: "A conflict: expected_version is stale, or the resource already exists",
    410: "The resource is gone (or its content is missing from the blob store)",
    413: "The request body is too large",
    415: "The body is not of a media type this operation takes",
    416: "The Range is outside the content (see Content-Range)",
    422: "The command was refused: the request is well-formed but cannot be carried out",
    429: "Rate limit exceeded; see Retry-After",
    503: "A backing service is unavailable; retry shortly",
    504: "The command was accepted but its outcome did not arrive in time; retry with the same Idempotency-Key",
}


def _digits(description: str) -> OpenAPIHeader:
    return OpenAPIHeader(
        description=description, required=False, schema=Schema(type=OpenAPIType.STRING, pattern=r"^[0-9]+$")
    )


REQUEST_ID = OpenAPIHeader(
    description="The request's id (the client's X-Request-ID if sane, else a new one)",
    required=True,
    schema=Schema(type=OpenAPIType.STRING, pattern=r"^[A-Za-z0-9._-]{1,128}$"),
)
RATE_HEADERS = {
    "RateLimit-Limit": _digits("Requests allowed in the tightest window"),
    "RateLimit-Remaining": _digits("Requests left in it"),
    "RateLimit-Reset": _digits("Seconds until it ends"),
}


def envelope_schema() -> Schema:
    """The JSON Schema of ``{"error": {code, reason, message, details, request_id}}``."""
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["error"],
        properties={
            "error": Schema(
                type=OpenAPIType.OBJECT,
                required=["code", "reason", "message", "details", "request_id"],
                properties={
                    "code": Schema(type=OpenAPIType.INTEGER, description="The HTTP status"),
                    "reason": Schema(type=OpenAPIType.STRING, description="Machine-readable cause"),
                    "message": Schema(type=OpenAPIType.STRING),
                    "details": Schema(description="Anything that helps: fields, limits, ids (or null)"),
                    "request_id": Schema(one_of=[Schema(type=OpenAPIType.STRING), Schema(type=OpenAPIType.NULL)]),
                },
            )
        },
    )


def error_statuses(route: HTTPRoute, method: str, public: bool, guarded: bool, has_body: bool) -> list[int]:
    """The error statuses one operation can answer."""
    # Every route: bad input, bad credentials, rate limits, a dependency down; 422 for a well-formed
    # value the use case refuses (e.g. search's unsupported modality, a refused command).
    statuses = [400, 401, 422, 429, 503]
    if guarded:
        statuses.append(403)
    if route.path_parameters:
        statuses.append(404)
    if has_body:
        statuses.append(413)
    if method in _COMMAND_METHODS and not public:
        statuses += [403, 404, 409, 410, 422, 504]
    return sorted(set(statuses))


def document_errors(app: Litestar) -> None:
    """Add the error responses, their envelope schema and the response headers to every operation."""
    document = app.openapi_schema
    assert document.components is not None and document.paths is not None
    schemas = document.components.schemas
    schemas[ENVELOPE] = envelope_schema()
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or route.path_format not in document.paths:
            continue
        item = document.paths[route.path_format]
        for handler in route.route_handlers:
            for method in handler.http_methods:
                operation: Operation | None = getattr(item, method.lower(), None)
                if operation is None:
                    continue
                if operation.operation_id in ("health", "ready"):  # health's path is a setting
                    _document_health(operation)
                    continue
                public = bool(handler.opt.get("public"))
                if public:
                    operation.security = []
                statuses = error_statuses(
                    route, method, public, PERMISSION in handler.opt, operation.request_body is not None
                )
                if handler.opt.get("binary_content"):
                    statuses += [410, 416]
                if handler.opt.get("multipart"):
                    statuses += [413, 415]
                _document(operation, statuses)
                if handler.opt.get("binary_content"):
                    _document_binary_content(operation)
    _request_bodies_as_msgspec_validates_them(app)
    _json_query_parameters(app)
    _body_or_query(app)
    _multipart_bodies(app)


def _request_bodies_as_msgspec_validates_them(app: Litestar) -> None:
    """Request body schemas from msgspec itself: litestar's drop ``additionalProperties: false``
    (``forbid_unknown_fields``) and the constraints on list items, which msgspec enforces."""
    bodies: set[type[msgspec.Struct]] = set()
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            data = handler.parsed_fn_signature.parameters.get("data")
            annotation = getattr(data, "annotation", None)
            if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
                bodies.add(annotation)
    if not bodies:
        return
    _, components = msgspec.json.schema_components(
        sorted(bodies, key=lambda t: t.__name__), ref_template="#/components/schemas/{name}"
    )
    served = app.plugins.get(OpenAPIPlugin).provide_openapi_schema()  # the cached dict /openapi.json serves
    served["components"]["schemas"].update(components)
    served["components"]["schemas"][JSON_VALUE] = JSON_VALUE_SCHEMA


def _json_query_parameters(app: Litestar) -> None:
    """A query parameter that carries a JSON value (route ``opt={"json_query": {name: Struct}}``) is
    documented with ``content: application/json`` and the struct's schema, not as a bare string."""
    served = app.plugins.get(OpenAPIPlugin).provide_openapi_schema()
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            for name, struct in handler.opt.get("json_query", {}).items():
                (schema,), components = msgspec.json.schema_components(
                    [struct], ref_template="#/components/schemas/{name}"
                )
                served["components"]["schemas"].update(components)
                for method in handler.http_methods:
                    operation = served["paths"][route.path_format][method.lower()]
                    for parameter in operation.get("parameters", []):
                        if parameter["name"] == name and parameter["in"] == "query":
                            parameter.pop("schema", None)
                            parameter["content"] = {"application/json": {"schema": schema}}


def _body_or_query(app: Litestar) -> None:
    """A JSON body whose fields may come as query parameters instead (route ``opt={"body_or_query": Struct}``:
    the login, which the spec's FastAPI ``login(username, password)`` reads from the query): the body is
    documented as the struct and optional, each of its fields as an optional query parameter."""
    served = app.plugins.get(OpenAPIPlugin).provide_openapi_schema()
    for route, handler, struct in _handlers_with(app, "body_or_query"):
        schema, components = _component(served, struct)
        fields = components[struct.__name__]["properties"]
        parameters = [
            {"name": name, "in": "query", "required": False, "schema": field, "description": "without a body"}
            for name, field in fields.items()
        ]
        for method in handler.http_methods:
            operation = served["paths"][route.path_format][method.lower()]
            operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": schema}}}
            operation["parameters"] = [*operation.get("parameters", []), *parameters]


def _handlers_with(app: Litestar, key: str) -> Iterator[tuple[HTTPRoute, Any, Any]]:
    """(route, handler, value) for each route handler whose ``opt`` has ``key``."""
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                if (value := handler.opt.get(key)) is not None:
                    yield route, handler, value


def _component(served: dict[str, Any], struct: type[msgspec.Struct]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The struct's schema (a reference) and its components, which are added to the served document."""
    (schema,), components = msgspec.json.schema_components([struct], ref_template="#/components/schemas/{name}")
    served["components"]["schemas"].update(components)
    return schema, components


def _document_health(operation: Operation) -> None:
    """/health and /ready are open and unlimited; they answer 503 with their own body when they cannot serve."""
    operation.security = []
    responses: dict[str, Any] = dict(operation.responses or {})
    healthy = responses["200"]
    if isinstance(healthy, OpenAPIResponse):
        healthy.headers = {**(healthy.headers or {}), "X-Request-ID": REQUEST_ID}
        responses["503"] = OpenAPIResponse(
            description="Unhealthy: a dependency cannot serve", headers=healthy.headers, content=healthy.content
        )
    operation.responses = responses


def _document(operation: Operation, statuses: list[int]) -> None:
    responses: dict[str, Any] = dict(operation.responses or {})
    for status in statuses:
        headers: dict[str, OpenAPIHeader | Reference] = {"X-Request-ID": REQUEST_ID}
        if status == 401:
            headers["WWW-Authenticate"] = OpenAPIHeader(required=True, schema=Schema(type=OpenAPIType.STRING))
        if status == 416:
            headers["Content-Range"] = OpenAPIHeader(required=True, schema=Schema(type=OpenAPIType.STRING))
        if status in (429, 503, 504):
            headers["Retry-After"] = _digits("Seconds to wait before retrying")
        responses[str(status)] = OpenAPIResponse(
            description=_DESCRIPTIONS[status],
            headers=headers,
            content={"application/json": OpenAPIMediaType(schema=Reference(f"#/components/schemas/{ENVELOPE}"))},
        )
    for code, response in responses.items():
        if isinstance(response, OpenAPIResponse) and code.startswith("2"):
            response.headers = {**(response.headers or {}), "X-Request-ID": REQUEST_ID, **RATE_HEADERS}
    operation.responses = responses


def _document_binary_content(operation: Operation) -> None:
    """An object's bytes: any media type (the stored one), 206 for a Range, 304 for If-None-Match."""
    responses: dict[str, Any] = dict(operation.responses or {})
    ok = responses["200"]
    assert isinstance(ok, OpenAPIResponse)
    binary = {"*/*": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, format="binary"))}  # type: ignore[arg-type]
    ok.content = binary
    ok.description = "The bytes, with the stored content type; ETag is the sha256"
    headers = {**(ok.headers or {}), "ETag": OpenAPIHeader(required=True, schema=Schema(type=OpenAPIType.STRING))}
    ok.headers = headers
    responses["206"] = OpenAPIResponse(description="The requested byte range", headers=headers, content=binary)
    responses["304"] = OpenAPIResponse(description="Not modified (If-None-Match matched the ETag)", headers=headers)
    operation.responses = responses
    parameters = list(operation.parameters or [])
    for name, description in (
        ("Range", "One byte range: bytes=first-last, bytes=first- or bytes=-suffix"),
        ("If-None-Match", "ETags the client holds; a match answers 304"),
    ):
        parameters.append(
            Parameter(
                name=name,
                param_in=ParamType.HEADER,
                required=False,
                description=description,
                schema=Schema(type=OpenAPIType.STRING),
            )
        )
    operation.parameters = parameters


def _multipart_bodies(app: Litestar) -> None:
    """A multipart/form-data body the handler parses itself (streamed, so not a litestar ``data``),
    documented from a msgspec Struct (route ``opt={"multipart": Struct}``): ``bytes`` fields are file
    parts (``format: binary``), other fields JSON parts (``encoding: application/json``)."""
    served = app.plugins.get(OpenAPIPlugin).provide_openapi_schema()
    for route, handler, form in _handlers_with(app, "multipart"):
        _component(served, form)
        body = served["components"]["schemas"].pop(form.__name__)
        encoding = {}
        for name, field in body["properties"].items():
            target = field.get("items", field)
            if target.get("contentEncoding") == "base64":
                target.pop("contentEncoding")
                target["format"] = "binary"
                encoding[name] = {"contentType": "application/octet-stream"}
            else:
                encoding[name] = {"contentType": "application/json"}
        for method in handler.http_methods:
            operation = served["paths"][route.path_format][method.lower()]
            operation["requestBody"] = {
                "required": True,
                "content": {"multipart/form-data": {"schema": body, "encoding": encoding}},
            }


def document_upload_limit(app: Litestar, max_files: int) -> None:
    """The upload's ``files`` count as the settings bound it (``storage.max_upload_files``)."""
    served = app.plugins.get(OpenAPIPlugin).provide_openapi_schema()
    body = served["paths"]["/api/v1/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    body["properties"]["files"]["maxItems"] = max_files
