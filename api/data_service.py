"""The data-object use cases as every entry point runs them (REST, GraphQL, WebSocket).

Each takes the input structs of ``api.inputs`` (so every entry point has validated them the same
way), checks what a struct cannot say (ids are UUIDs, JSON values are storable, sizes), builds a
command, submits it and maps the outcome; reads go to the read model, after waiting for a
consistency token when one is given. No business rule lives here: the aggregate decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from litestar.connection import ASGIConnection
from psycopg import AsyncConnection

from api.auth import actor_of
from api.commands import derived_id, submit
from api.errors import ApiError
from api.inputs import AnnotationCreate, DataIngestionRequest, checked_json
from api.inputs import object_id as checked_id
from api.middleware import random_uuid
from api.rbac import can_see
from commands.data import inline_content
from commands.envelope import Outcome, Position
from infra.runtime.bootstrap import ApiContainer
from projections.data_objects import ObjectRow, get_data_object_with_annotations

Connection = ASGIConnection[Any, Any, Any, Any]
Row = TypeVar("Row", bound=Mapping[str, Any])
ObjectQuery = Callable[[AsyncConnection[Any], str], Awaitable[Row | None]]


@dataclass(frozen=True)
class Written:
    aggregate_id: str
    outcome: Outcome
    created_id: str | None = None  # e.g. the new annotation's id


async def ingest(connection: Connection, container: ApiContainer, request: DataIngestionRequest) -> Written:
    """Submit IngestData for a new object: small content inline, larger content stored by hash first."""
    limits = container.settings.storage
    data = request.content.encode()
    if len(data) > limits.max_content_bytes:
        raise ApiError(413, "too_large", f"content is larger than {limits.max_content_bytes} bytes")
    metadata = checked_json(request.metadata, "metadata")
    if len(msgspec.json.encode(metadata)) > limits.max_metadata_bytes:
        raise ApiError(413, "too_large", f"metadata is larger than {limits.max_metadata_bytes} bytes")
    labels = request.annotations or []
    if len(labels) > limits.max_annotations:
        raise ApiError(422, "invalid", f"at most {limits.max_annotations} initial annotations")
    stored = inline_content(request.content, limits.event_content_bytes)
    if stored is None:  # too large for the log: durably into the blob store before the command names it
        blob = await asyncio.to_thread(container.blobs.put, data)  # fsyncs: never on the event loop
        stored = {"content_hash": blob.content_hash, "size": blob.size, "location": blob.location}
    object_id = derived_id(connection, "ingest") or random_uuid()
    payload = {"content_type": request.content_type, **stored, "metadata": metadata, "annotations": labels}
    return Written(object_id, await submit(connection, container, "IngestData", object_id, payload))


async def annotate(
    connection: Connection,
    container: ApiContainer,
    object_id: str,
    request: AnnotationCreate,
    expected: int | None,
) -> Written:
    """Submit AnnotateObject; the annotation id is derived from the Idempotency-Key when given."""
    object_id = checked_id(object_id)
    content = checked_json(request.content, "content")
    if len(msgspec.json.encode(content)) > container.settings.storage.max_metadata_bytes:
        raise ApiError(413, "too_large", "annotation content is too large")
    annotation_id = derived_id(connection, f"annotation:{object_id}") or random_uuid()
    payload = {
        "annotation_id": annotation_id,
        "annotation_type": request.annotation_type,
        "content": content,
        "confidence": request.confidence,
    }
    outcome = await submit(connection, container, "AnnotateObject", object_id, payload, expected)
    return Written(object_id, outcome, annotation_id)


async def delete(connection: Connection, container: ApiContainer, object_id: str, expected: int | None) -> Written:
    """Submit DeleteObject (400 before anything is sent when the id is not a UUID)."""
    object_id = checked_id(object_id)
    return Written(object_id, await submit(connection, container, "DeleteObject", object_id, {}, expected))


TOKEN_FIELD = "X-Consistency-Token"  # or ?consistency_token=, GraphQL's consistencyToken: the same token


async def wait_for_token(container: ApiContainer, token: str | None) -> None:
    """Block (bounded) until the read models have applied the write that returned ``token``."""
    if not token:
        return
    try:
        position = Position.parse(token)
    except ValueError as exc:
        message = "consistency token must look like '<partition>:<offset>'"
        raise ApiError(400, "invalid_token", message, {"field": TOKEN_FIELD}) from exc
    if container.changes.reached(position.partition, position.offset):
        return
    await _refuse_unreachable(container, position, token)
    timeout = container.settings.consistency.wait_timeout_seconds
    if not await container.changes.wait_for(position.partition, position.offset, timeout):
        raise ApiError(
            503,
            "not_yet_consistent",
            f"the read model has not reached position {token} within {timeout:g}s; retry shortly",
            {"position": token},
        )


async def _refuse_unreachable(container: ApiContainer, position: Position, token: str) -> None:
    """400 for a token no write returned (no such partition, or past the end of the log).

    Without this a made-up token waits the whole consistency timeout and then answers 503, as if
    the read model were behind. A broker that does not answer leaves the decision to the wait.
    """
    try:
        end = await container.bus.events_end(position.partition)
    except Exception:  # broker unreachable or slow: keep the bounded wait
        return
    if end is None or position.offset >= end:
        raise ApiError(
            400,
            "invalid_token",
            f"consistency token {token} names no event in the log: no write returned it",
            {"field": TOKEN_FIELD, "position": token},
        )


async def read(connection: Connection, container: ApiContainer, object_id: str, token: str | None = None) -> ObjectRow:
    """The object row with its annotations (list under "annotations"), in one query.

    404 when absent or not visible to the caller (owner and admins only: ids cannot be probed).
    """
    return await visible_object(connection, container, object_id, token, query=get_data_object_with_annotations)


async def visible_object(
    connection: Connection,
    container: ApiContainer,
    object_id: str,
    token: str | None = None,
    *,
    query: ObjectQuery[Row],
) -> Row:
    """The object row ``query`` reads (e.g. get_data_object); 404 when absent or not the caller's to see."""
    return await visible_row(connection, container, object_id, token, "data object", query)


async def visible_row(
    connection: Connection,
    container: ApiContainer,
    row_id: str,
    token: str | None,
    what: str,
    load: ObjectQuery[Row],
) -> Row:
    """The row ``load`` finds for ``row_id`` (a UUID) once the read model reached ``token``.

    404 when the id is malformed, absent or the row's ``owner`` is not the caller (admins see all):
    the visibility rule of objects, so ids cannot be probed.
    """
    await wait_for_token(container, token)
    try:
        row_id = checked_id(row_id)
    except ApiError as exc:  # like REST's path converter: a malformed id names nothing
        raise ApiError(404, "not_found", f"{what} does not exist") from exc
    actor = actor_of(connection)
    row = await container.reads.read(load, row_id)
    if row is None or not can_see(actor.role, actor.user_id, row["owner"]):
        raise ApiError(404, "not_found", f"{what} {row_id} does not exist")
    return row
