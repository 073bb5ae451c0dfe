"""REST: ingest, read, annotate and delete data objects."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from api import data_service
from api.as_of import object_as_of
from api.commands import expected_version
from api.inputs import AnnotationCreate, DataIngestionRequest
from api.rbac import Permission, requires
from commands.envelope import Outcome
from infra.runtime.bootstrap import ApiContainer


class DataIngestionResponse(msgspec.Struct):
    object_id: str
    status: str
    created_at: datetime
    processing_time_ms: float
    version: int
    position: str | None


class Annotation(msgspec.Struct):
    annotation_id: str
    annotator_id: str
    annotation_type: str
    content: Any
    confidence: float
    source: str  # "user", "ingest", "graph:<execution id>", or "unknown" (annotations of before v2 events)
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
    QueryParameter(
        name="consistency_token",
        required=False,
        pattern=r"^[0-9]+:[0-9]+$",
        description="A position token from a write; the read waits until the read model has reached it.",
    ),
]
AsOfParameter = Annotated[
    str | None,
    QueryParameter(
        name="as_of",
        required=False,
        max_length=64,
        description="A version number or an RFC 3339 time: the object as it was then, folded from its events"
        " (visible before its deletion; 404 before its creation)",
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
        opt={**requires(Permission.WRITE), "burst": True},
    )
    async def ingest(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[DataIngestionRequest],
        container: NamedDependency[ApiContainer],
    ) -> Response[DataIngestionResponse]:
        started = time.perf_counter()
        written = await data_service.ingest(request, container, data)
        outcome = written.outcome
        body = DataIngestionResponse(
            object_id=written.aggregate_id,
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
        summary="Get a data object with its annotations, now or as of a version or time (its owner or an admin)",
        opt=requires(Permission.READ),
    )
    async def get_object(
        self,
        request: Request[Any, Any, Any],
        object_id: FromPath[uuid.UUID],
        container: NamedDependency[ApiContainer],
        consistency_token: ConsistencyToken = None,
        as_of: AsOfParameter = None,
    ) -> Response[DataObject]:
        token = consistency_token or request.headers.get("x-consistency-token")
        row: Mapping[str, Any]
        if as_of is not None:
            row = await object_as_of(request, container, str(object_id), as_of, token)
        else:
            row = await data_service.read(request, container, str(object_id), token)
        body = msgspec.convert(row, DataObject, from_attributes=True)
        return Response(body, headers={"ETag": f'"{body.version}"'})

    @post(
        "/data/{object_id:uuid}/annotations",
        operation_id="annotateDataObject",
        status_code=201,
        summary="Add an annotation to a data object (its owner or an admin)",
        opt=requires(Permission.WRITE),
    )
    async def annotate(
        self,
        request: Request[Any, Any, Any],
        object_id: FromPath[uuid.UUID],
        data: JSONBody[AnnotationCreate],
        container: NamedDependency[ApiContainer],
    ) -> Response[AnnotationCreated]:
        written = await data_service.annotate(request, container, str(object_id), data, expected_version(request))
        outcome = written.outcome
        body = AnnotationCreated(written.created_id or "", str(object_id), outcome.version, outcome.position)
        return Response(body, status_code=201, headers=_write_headers(outcome))

    @delete(
        "/data/{object_id:uuid}",
        operation_id="deleteDataObject",
        status_code=200,
        summary="Delete a data object (its owner or an admin)",
        opt=requires(Permission.WRITE),
    )
    async def delete_object(
        self, request: Request[Any, Any, Any], object_id: FromPath[uuid.UUID], container: NamedDependency[ApiContainer]
    ) -> Response[Deleted]:
        written = await data_service.delete(request, container, str(object_id), expected_version(request))
        outcome = written.outcome
        body = Deleted("deleted", str(object_id), outcome.version, outcome.position)
        return Response(body, headers=_write_headers(outcome))


def _write_headers(outcome: Outcome) -> dict[str, str]:
    headers = {"ETag": f'"{outcome.version}"'}
    if outcome.position:
        headers["X-Consistency-Token"] = outcome.position
    if outcome.duplicate:
        headers["Idempotent-Replayed"] = "true"
    return headers
