"""Command input as every entry point takes it: one set of structs and checks for REST, GraphQL, WebSocket.

REST declares these structs as request bodies (litestar validates them, 400 on failure); GraphQL
and WebSocket build the same structs from their arguments with ``parse``. The rules themselves
(``commands.limits``) are the ones the command processor checks again.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar
from urllib.parse import unquote_to_bytes

import msgspec
from litestar import Request
from litestar.enums import RequestEncodingType
from litestar.exceptions import ValidationException
from litestar.utils.scope.state import ScopeState

from api.errors import ApiError
from commands.conversation import MessageText
from commands.limits import (
    MAX_JSON_DEPTH,
    MAX_KEY_CHARS,
    AnnotationType,
    Confidence,
    ContentType,
    InvalidInput,
    Label,
    Text,
    check_json,
    check_uuid,
)

S = TypeVar("S", bound=msgspec.Struct)

# What ``check_json`` admits, as JSON Schema for the OpenAPI document (a component of that name): no
# NUL in strings or keys, keys up to MAX_KEY_CHARS. The integer range and the nesting depth
# (MAX_JSON_DEPTH) have no JSON Schema keyword that fits; the description states them.
JSON_VALUE = "JsonValue"
_NO_NUL = "^[^\\x00]*$"
_REF = {"$ref": f"#/components/schemas/{JSON_VALUE}"}
JSON_VALUE_SCHEMA: dict[str, Any] = {
    "description": (
        f"Any JSON value the log and PostgreSQL can store: nested at most {MAX_JSON_DEPTH} deep, integers"
        " in the signed 64-bit range, no NUL characters"
    ),
    "anyOf": [
        {"type": "string", "pattern": _NO_NUL},
        # Integers must lie in the signed 64-bit range; as a bound on "number" that would also refuse
        # floats such as 1e300, which JSON Schema counts as integers and the API accepts.
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "items": _REF},
        {
            "type": "object",
            "propertyNames": {"maxLength": MAX_KEY_CHARS, "pattern": _NO_NUL},
            "additionalProperties": _REF,
        },
    ],
}
_OBJECT_RULES = {"propertyNames": {"maxLength": MAX_KEY_CHARS, "pattern": _NO_NUL}, "additionalProperties": _REF}
JsonObject = Annotated[dict[str, Any], msgspec.Meta(extra_json_schema=_OBJECT_RULES)]
JsonAny = Annotated[Any, msgspec.Meta(extra_json_schema=_REF)]


class DataIngestionRequest(msgspec.Struct, forbid_unknown_fields=True):
    content: Text
    content_type: ContentType
    metadata: JsonObject = {}
    annotations: list[Label] | None = None


class AnnotationCreate(msgspec.Struct, forbid_unknown_fields=True):
    annotation_type: AnnotationType
    content: JsonAny
    confidence: Confidence = 1.0


class ExecutionRequest(msgspec.Struct, forbid_unknown_fields=True):
    graph: JsonObject
    inputs: JsonObject = {}
    options: JsonObject = {}


class ChatMessage(msgspec.Struct, forbid_unknown_fields=True):
    content: MessageText
    conversation_id: str | None = None  # a UUID; none starts a new conversation


def invalid(exc: InvalidInput) -> ApiError:
    """The 400 an InvalidInput answers, naming the field."""
    return ApiError(400, "validation_error", exc.message, {"field": exc.field})


def parse(struct: type[S], fields: dict[str, Any]) -> S:
    """Build ``struct`` from already-decoded arguments with the REST body's rules; 400 naming the field."""
    try:
        return msgspec.convert(fields, struct)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "validation_error", str(exc), {"field": _field_of(str(exc))}) from exc


def checked_json(value: Any, field: str) -> Any:
    """``value`` if every worker can store it (depth, numbers, NUL), else a 400 naming the field."""
    try:
        check_json(value, field)
    except InvalidInput as exc:
        raise invalid(exc) from exc
    return value


def json_object_text(raw: str | bytes, field: str) -> dict[str, Any]:
    """A JSON object sent as text (the ``filters`` parameter, an upload's ``metadata`` part); else a 400
    naming ``field`` and saying what is wrong: not JSON, a number no codec here takes, too deep, not an object."""
    try:
        value = msgspec.json.decode(raw)
    except msgspec.ValidationError as exc:  # well-formed JSON, but a value out of range (1e400)
        message = f"{field}: {exc} (numbers are 64-bit integers or finite floats)"
        raise ApiError(400, "validation_error", message, {"field": field}) from exc
    except msgspec.DecodeError as exc:
        raise ApiError(400, "validation_error", f"{field} is not valid JSON: {exc}", {"field": field}) from exc
    except RecursionError as exc:  # nested thousands deep
        raise ApiError(400, "validation_error", f"{field} is nested too deeply", {"field": field}) from exc
    if not isinstance(value, dict):
        raise ApiError(400, "validation_error", f"{field} must be a JSON object", {"field": field})
    return value


def object_id(value: Any, field: str = "object_id") -> str:
    """A UUID id, checked before any command is sent or any query runs (400 otherwise)."""
    try:
        return check_uuid(value, field)
    except InvalidInput as exc:
        raise invalid(exc) from exc


def _field_of(message: str) -> str | None:
    # msgspec ends its messages with "- at `$.field`" (none: the value as a whole), except a top-level
    # "Object missing required field `x`"
    _, found, where = message.rpartition("- at `$.")
    if not found:
        _, found, where = message.rpartition("missing required field `")
    return where.rstrip("`") or None if found else None


def require_one_of(value: str | None, allowed: list[str], field: str, noun: str, plural: str) -> str | None:
    """A filter parameter as given (None: no filter); a value outside ``allowed`` is a 400 listing them under
    ``details[plural]``, not an empty answer that looks like "none of those" (execution statuses, node
    categories)."""
    if value is not None and value not in allowed:
        raise ApiError(
            400,
            "validation_error",
            f"no {noun} {value[:64]!r}; the {plural} are {', '.join(allowed)}",
            {"field": field, plural: allowed},
        )
    return value


_JSON_MEDIA = "application/json"


_UTF8 = ("utf-8", "utf8")


def json_media_type(content_type: str) -> bool:
    """``application/json`` or a ``+json`` structured syntax type (RFC 6839), in UTF-8: other parameters are
    ignored, but a ``charset`` other than UTF-8 is not JSON (RFC 8259 8.1) and its bytes would be misread."""
    media, _, parameters = content_type.partition(";")
    media = media.strip().lower()
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in _UTF8:
            return False
    return media == _JSON_MEDIA or (media.startswith("application/") and media.endswith("+json"))


async def check_request(request: Request[Any, Any, Any]) -> None:
    """The app's before_request hook: a query string in UTF-8, then a JSON route's body (require_json_body)."""
    require_utf8_query(request.scope.get("query_string", b""))
    await require_json_body(request)


def require_utf8_query(query: bytes) -> None:
    """A 400 naming the parameter whose name or value, percent-decoded, is not UTF-8: the framework reads it
    with replacement characters (``?query=%FF`` searched for "\ufffd")."""
    if not query or (b"%" not in query and query.isascii()):
        return
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        try:
            unquote_to_bytes(name).decode()
            unquote_to_bytes(value).decode()
        except UnicodeDecodeError as exc:
            field = unquote_to_bytes(name).decode("utf-8", "replace")[:64]
            message = "query parameters must be UTF-8 once percent-decoded"
            raise ApiError(400, "validation_error", message, {"field": field}) from exc


async def require_json_body(request: Request[Any, Any, Any]) -> None:
    """The app's before_request hook for a route whose body is JSON.

    A body declared as anything else (``text/plain``, a form) is refused with 415 before it is read.
    Without a Content-Type the body is taken as JSON, as the spec's FastAPI does; multipart routes
    (upload) declare no JSON body. The body is then decoded against the route's struct strictly:
    litestar converts a body as it converts query strings (``"0.5"`` would pass as a confidence,
    ``"5"`` as a number), which the spec's types do not allow. A missing, malformed or too deeply
    nested body is a 400 naming ``body``; a value of the wrong type a 400 naming its field, with
    litestar's own ``details`` (``field``, ``source``, ``errors``). The decoded body is the handler's.
    """
    field = request.route_handler.parsed_fn_signature.parameters.get("data")
    if field is None or getattr(field.kwarg_definition, "media_type", RequestEncodingType.JSON) != (
        RequestEncodingType.JSON
    ):
        return
    declared = request.headers.get("content-type")
    if declared is not None and not json_media_type(declared):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"the body must be {_JSON_MEDIA} (UTF-8), not {declared[:100]!r}",
            {"field": "Content-Type", "expected": _JSON_MEDIA},
        )
    body = await request.body()
    if field.is_optional and not body.strip():  # e.g. login, whose credentials may be in the query instead
        return
    # What litestar's request.json() answers from now on: the handler's ``data`` is this value (its
    # conversion to the same type passes it through), not the body decoded a second time.
    ScopeState.from_scope(request.scope).json = strictly_decoded(body, field.annotation)


BODY = "body"


def strictly_decoded(body: bytes, struct: Any) -> Any:
    """``body`` decoded as ``struct`` without lax conversions; the 400 a client can act on otherwise."""
    if not body.strip():
        raise ApiError(400, "validation_error", "the request body is empty: a JSON object is expected", {"field": BODY})
    try:
        return msgspec.json.decode(body, type=struct)
    except msgspec.ValidationError as exc:
        message, _, _ = str(exc).partition(" - at `$")
        key = _field_of(str(exc)) or BODY  # the envelope's field: this, or the field the message names
        raise ValidationException(
            "the request is not valid", extra=[{"message": message, "key": key, "source": BODY}]
        ) from exc
    except msgspec.DecodeError as exc:
        raise ApiError(400, "validation_error", f"the request body is not valid JSON ({exc})", {"field": BODY}) from exc
    except RecursionError as exc:
        raise ApiError(400, "validation_error", "the body is nested too deeply", {"field": BODY}) from exc
