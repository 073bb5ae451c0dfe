"""REST: the spec's ``POST /api/v1/upload``: several files (and optional metadata) in one request."""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency

from api import upload_service
from api.errors import ApiError
from api.inputs import JsonObject
from api.rbac import Permission, requires
from infra.runtime.bootstrap import ApiContainer


class UploadedFile(msgspec.Struct):
    filename: str
    object_id: str
    size: int
    content_type: str
    version: int
    position: str | None


class FailedFile(msgspec.Struct):
    filename: str
    reason: str
    message: str


class UploadResponse(msgspec.Struct):
    uploaded: list[UploadedFile]
    count: int
    failed: list[FailedFile]
    processing_time_ms: float


# The multipart body as OpenAPI shows it (api.openapi): the handler parses the stream itself
# (api.upload_service), so this struct documents the body and is never decoded into.
class UploadForm(msgspec.Struct, forbid_unknown_fields=True):
    """Files, each its own ``files`` part, and an optional ``metadata`` JSON object for all of them."""

    files: Annotated[list[bytes], msgspec.Meta(min_length=1, description="the files, each its own part")]
    metadata: JsonObject = {}  # added to every file's metadata


class UploadController(Controller):
    path = "/api/v1"
    tags = ["data"]

    @post(
        "/upload",
        operation_id="uploadFiles",
        status_code=201,
        summary="Upload files (multipart 'files', optional 'metadata' JSON); each becomes a data object",
        description="Each file is stored by its sha256 and ingested as its own data object, its content type"
        " sniffed from its bytes. Files that fail are listed under `failed` with the reason; the others are"
        " kept. When every file fails the answer is an error whose details list them.",
        request_max_body_size=None,  # bounded by storage.max_upload_request_bytes while streaming
        opt={**requires(Permission.WRITE), "burst": True, "multipart": UploadForm},
    )
    async def upload(
        self, request: Request[Any, Any, Any], container: NamedDependency[ApiContainer]
    ) -> Response[UploadResponse]:
        started = time.perf_counter()
        received = await upload_service.receive(request, container)
        uploaded, failed = await upload_service.ingest_all(request, container, received)
        failures = [FailedFile(f.filename, f.reason, f.message) for f in failed]
        if not uploaded:
            status = 413 if all(f.reason == "too_large" for f in failed) else 422
            raise ApiError(
                status,
                "upload_failed",
                "no file could be stored",
                {"failed": [msgspec.to_builtins(f) for f in failures]},
            )
        files = [
            UploadedFile(u.filename, u.object_id, u.size, u.content_type, u.outcome.version, u.outcome.position)
            for u in uploaded
        ]
        body = UploadResponse(files, len(files), failures, round((time.perf_counter() - started) * 1000, 3))
        # No X-Consistency-Token header: the files land on different partitions, so each file's
        # position (its own read-your-writes token) is in its entry.
        return Response(body, status_code=201)
