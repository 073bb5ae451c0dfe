"""REST: ingest, read, annotate and delete data objects."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import Parameter

from api.auth import principal_of
from api.commands import derived_id, expected_version, submit
from api.errors import ApiError
from api.rbac import Permission, can_see, requires
from commands.envelope import Outcome, Position
from infra.bootstrap import ApiContainer
from projections.annotations import annotations_of
from projections.data_objects import get_data_object

CONTENT_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}(;.{0,200})?$"
LARGE_CONTENT = 256 * 1024  # above this, hashing and writing the blob leaves the event loop


class DataIngestionRequest(msgspec.Struct, forbid_unknown_fields=True):
    content: str
    content_type: Annotated[str, msgspec.Meta(pattern=CONTENT_TYPE_PATTERN)]
    metadata: dict[str, Any] = {}
    annotations: list[Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]] | None = None


class DataIngestionResponse(msgspec.Struct):
    object_id: str
    status: str
    created_at: datetime
    processing_time_ms: float
    version: int
    position: str | None


class AnnotationCreate(msgspec.Struct, forbid_unknown_fields=True):
    annotation_type: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    content: Any
    confidence: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 1.0


class Annotation(msgspec.Struct):
    annotation_id: str
    annotator_id: str
    annotation_type: str
    content: Any
    confidence: float
    created_at: datetime


class AnnotationCreated(msgspec.Struct):
    annotation_id: str
    object_id: str
    version: int
    position: str | None


class DataObject(msgspec.Struct):
    object_id: str
    object_type: str
    content_type: str
    content_hash: str
    storage_location: str
    size: int
    metadata: dict[str, Any]
    owner: str
    version: int
    created_at: datetime
    updated_at: datetime
    annotations: list[Annotation]


class Deleted(msgspec.Struct):
    status: str
    object_id: str
    version: int
    position: str | None


ConsistencyToken = Annotated[
    str | None,
    Parameter(
        query="consistency_token",
        required=False,
        description="A position token from a write; the read waits until the read model has reached it.",
    ),
]


class DataController(Controller):
    path = "/api/v1"
    tags = ["data"]

    @post(
        "/ingest",
        operation_id="ingestData",
        status_code=201,
        summary="Ingest data into the pipeline",
        guards=[requires(Permission.WRITE)],
        opt={"burst": True},
    )
    async def ingest(
        self, request: Request[Any, Any, Any], data: DataIngestionRequest, container: ApiContainer
    ) -> Response[DataIngestionResponse]:
        started = time.perf_counter()
        limits = container.settings.storage
        content = data.content.encode()
        if len(content) > limits.max_content_bytes:
            raise ApiError(413, "too_large", f"content is larger than {limits.max_content_bytes} bytes")
        if len(msgspec.json.encode(data.metadata)) > limits.max_metadata_bytes:
            raise ApiError(413, "too_large", f"metadata is larger than {limits.max_metadata_bytes} bytes")
        labels = data.annotations or []
        if len(labels) > limits.max_annotations:
            raise ApiError(422, "invalid", f"at most {limits.max_annotations} initial annotations")
        if len(content) > LARGE_CONTENT:
            blob = await asyncio.to_thread(container.blobs.put, content)
        else:
            blob = container.blobs.put(content)
        object_id = derived_id(request, "ingest") or str(uuid.uuid4())
        payload = {
            "content_type": data.content_type,
            "content_hash": blob.content_hash,
            "size": blob.size,
            "location": blob.location,
            "metadata": data.metadata,
            "annotations": labels,
        }
        outcome = await submit(request, container, "IngestData", object_id, payload)
        body = DataIngestionResponse(
            object_id=object_id,
            status="success",
            created_at=datetime.fromtimestamp(outcome.result.get("created_at", time.time()), UTC),
            processing_time_ms=round((time.perf_counter() - started) * 1000, 3),
            version=outcome.version,
            position=outcome.position,
        )
        return Response(body, status_code=201, headers=_write_headers(outcome))

    @get(
        "/data/{object_id:uuid}",
        operation_id="getDataObject",
        summary="Get a data object with its annotations (visible to its owner and admins)",
        guards=[requires(Permission.READ)],
    )
    async def get_object(
        self,
        request: Request[Any, Any, Any],
        object_id: uuid.UUID,
        container: ApiContainer,
        consistency_token: ConsistencyToken = None,
    ) -> Response[DataObject]:
        await _wait_for_token(request, container, consistency_token)
        async with container.pool.connection() as conn:
            row = await get_data_object(conn, str(object_id))
            caller = principal_of(request)
            if row is None or not can_see(caller.role, caller.user_id, row["owner"]):
                raise ApiError(404, "not_found", f"data object {object_id} does not exist")
            notes = await annotations_of(conn, str(object_id))
        body = DataObject(**row, annotations=[Annotation(**n) for n in notes])
        return Response(body, headers={"ETag": f'"{body.version}"'})

    @post(
        "/data/{object_id:uuid}/annotations",
        operation_id="annotateDataObject",
        status_code=201,
        summary="Add an annotation to a data object (its owner or an admin)",
        guards=[requires(Permission.WRITE)],
    )
    async def annotate(
        self, request: Request[Any, Any, Any], object_id: uuid.UUID, data: AnnotationCreate, container: ApiContainer
    ) -> Response[AnnotationCreated]:
        if len(msgspec.json.encode(data.content)) > container.settings.storage.max_metadata_bytes:
            raise ApiError(413, "too_large", "annotation content is too large")
        annotation_id = derived_id(request, f"annotation:{object_id}") or str(uuid.uuid4())
        payload = {
            "annotation_id": annotation_id,
            "annotation_type": data.annotation_type,
            "content": data.content,
            "confidence": data.confidence,
        }
        outcome = await submit(request, container, "AnnotateObject", str(object_id), payload, expected_version(request))
        body = AnnotationCreated(annotation_id, str(object_id), outcome.version, outcome.position)
        return Response(body, status_code=201, headers=_write_headers(outcome))

    @delete(
        "/data/{object_id:uuid}",
        operation_id="deleteDataObject",
        status_code=200,
        summary="Delete a data object (its owner or an admin)",
        guards=[requires(Permission.WRITE)],
    )
    async def delete_object(
        self, request: Request[Any, Any, Any], object_id: uuid.UUID, container: ApiContainer
    ) -> Response[Deleted]:
        outcome = await submit(request, container, "DeleteObject", str(object_id), {}, expected_version(request))
        body = Deleted("deleted", str(object_id), outcome.version, outcome.position)
        return Response(body, headers=_write_headers(outcome))


def _write_headers(outcome: Outcome) -> dict[str, str]:
    headers = {"ETag": f'"{outcome.version}"'}
    if outcome.position:
        headers["X-Consistency-Token"] = outcome.position
    if outcome.duplicate:
        headers["Idempotent-Replayed"] = "true"
    return headers


async def _wait_for_token(request: Request[Any, Any, Any], container: ApiContainer, query_token: str | None) -> None:
    token = query_token or request.headers.get("x-consistency-token")
    if not token:
        return
    try:
        position = Position.parse(token)
    except ValueError as exc:
        raise ApiError(400, "invalid_token", "consistency token must look like '<partition>:<offset>'") from exc
    timeout = container.settings.consistency.wait_timeout_seconds
    if not await container.changes.wait_for(position.partition, position.offset, timeout):
        raise ApiError(
            503,
            "not_yet_consistent",
            f"the read model has not reached position {token} within {timeout:g}s; retry shortly",
            {"position": token},
        )
