"""The spec's multi-file upload: multipart streamed into the blob store, one IngestData per file.

The body is parsed as it arrives (``multipart.PushMultipartParser`` over ``request.stream()``), and
each file part goes straight into a ``BlobWriter`` that hashes it while writing a temp file: memory
stays bounded by the chunk size whatever the file's size, and the client's filename never names
anything on disk. Only when the whole body has arrived and is well-formed are the files checked
(type sniffed from the bytes), moved into place under their hash and submitted, each through the
normal command path. A body that breaks a per-request rule (malformed, too many files, over the
request limit) leaves nothing behind; a file that breaks a per-file rule (too large, type
contradicted) is reported as failed and the others go on.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

from litestar import Request
from multipart import MultipartSegment, ParserError, ParserLimitReached, PushMultipartParser

from api.auth import actor_of
from api.commands import derived_id, submit
from api.errors import ApiError
from api.inputs import checked_json, json_object_text
from api.middleware import random_uuid
from commands.envelope import Outcome
from domain.content_types import ContentTypeMismatch, decide
from domain.data_object import CONTENT_TYPE_PATTERN
from infra.adapters.blobstore import BlobTooLarge, BlobWriter
from infra.runtime.bootstrap import ApiContainer

MAX_FILENAME = 255
FRAMING_ALLOWANCE = 64 * 1024  # multipart boundaries and part headers on top of the files' bytes
FILES_FIELD = "files"
METADATA_FIELD = "metadata"
BODY = {"field": "body"}  # what a malformed multipart body's 400 names
# What each file's metadata gets from the server; a request's metadata part may not name them.
SERVER_METADATA = ("filename", "size", "sha256", "owner")


@dataclass
class Part:
    filename: str
    declared: str | None
    writer: BlobWriter | None
    error: tuple[str, str] | None = None  # (reason, message) once the file is refused


@dataclass
class Received:
    parts: list[Part] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    metadata_parts: int = 0

    def discard(self) -> None:
        for part in self.parts:
            if part.writer is not None:
                part.writer.abort()


@dataclass(frozen=True)
class Uploaded:
    filename: str
    object_id: str
    size: int
    content_type: str
    outcome: Outcome


@dataclass(frozen=True)
class Failed:
    filename: str
    reason: str
    message: str


def boundary_of(request: Request[Any, Any, Any]) -> bytes:
    """The multipart boundary of the request's Content-Type; 400 (415 for another type) otherwise."""
    media, _, params = request.headers.get("content-type", "").partition(";")
    if media.strip().lower() != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "the upload must be multipart/form-data")
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary" and value.strip('"'):
            return value.strip('"').encode("latin-1", errors="replace")
    raise ApiError(400, "validation_error", "multipart/form-data without a boundary")


def _clean_filename(raw: str | None, index: int) -> str:
    """The client's filename as metadata only: its last path component, printable, bounded."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable())[:MAX_FILENAME].strip()
    return name if name not in ("", ".", "..") else f"file-{index + 1}"


async def receive(request: Request[Any, Any, Any], container: ApiContainer) -> Received:
    """Stream the body into temp blobs; ApiError (nothing kept) when the request as a whole is bad."""
    limits = container.settings.storage
    boundary = boundary_of(request)
    declared = request.headers.get("content-length", "")
    if (
        declared.isascii()
        and declared.isdigit()
        and int(declared) > limits.max_upload_request_bytes + FRAMING_ALLOWANCE
    ):
        raise ApiError(413, "too_large", f"the upload is larger than {limits.max_upload_request_bytes} bytes")
    received = Received()
    total = 0
    metadata_raw = bytearray()
    current: Part | None = None
    segment: MultipartSegment | None = None
    try:
        with PushMultipartParser(boundary, max_segment_count=limits.max_upload_files + 2) as parser:
            async for chunk in request.stream():
                total += len(chunk)
                if total > limits.max_upload_request_bytes + FRAMING_ALLOWANCE:
                    raise ApiError(
                        413,
                        "too_large",
                        f"the upload is larger than {limits.max_upload_request_bytes} bytes",
                        {"limit": limits.max_upload_request_bytes},
                    )
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        segment = event
                        current = _start(received, event, container)
                    elif event:
                        _take(current, segment, event, metadata_raw, limits.max_metadata_bytes)
                    else:
                        segment, current = None, None
            if not parser.closed:
                raise ApiError(400, "validation_error", "the multipart body ended early", BODY)
    except ParserLimitReached as exc:
        received.discard()
        if "segment count" in str(exc):  # too many parts; any other limit (a part's headers) is malformed input
            message = f"the multipart body has too many parts; at most {limits.max_upload_files} files"
            raise ApiError(400, "too_many_files", message) from exc
        raise ApiError(400, "validation_error", f"the multipart body breaks a parser limit ({exc})", BODY) from exc
    except ParserError as exc:
        received.discard()
        raise ApiError(400, "validation_error", f"malformed multipart body: {exc}", BODY) from exc
    except BaseException:
        received.discard()
        raise
    if not received.parts:
        message = f"no files: send one or more '{FILES_FIELD}' parts"
        raise ApiError(400, "validation_error", message, {"field": FILES_FIELD})
    if len(received.parts) > limits.max_upload_files:
        received.discard()
        raise ApiError(400, "too_many_files", f"at most {limits.max_upload_files} files per upload")
    if metadata_raw:
        received.metadata = _metadata(received, bytes(metadata_raw))
    return received


def _start(received: Received, segment: MultipartSegment, container: ApiContainer) -> Part | None:
    if segment.name == METADATA_FIELD and segment.filename is None:
        received.metadata_parts += 1
        if received.metadata_parts > 1:  # its bytes would run on into the first one's
            raise ApiError(400, "validation_error", "at most one metadata part", {"field": METADATA_FIELD})
        return None
    if segment.name != FILES_FIELD or segment.filename is None:
        raise ApiError(
            400,
            "validation_error",
            f"unexpected form field {segment.name!r}: send '{FILES_FIELD}' file parts and an optional"
            f" '{METADATA_FIELD}' JSON field",
            {"field": segment.name[:100]},
        )
    index = len(received.parts)
    limit = container.settings.storage.max_upload_file_bytes
    part = Part(_clean_filename(segment.filename, index), segment.content_type, container.blobs.writer(limit))
    received.parts.append(part)
    return part


def _take(part: Part | None, segment: MultipartSegment | None, data: bytes, metadata: bytearray, limit: int) -> None:
    if part is None:  # the metadata field
        metadata.extend(data)
        if len(metadata) > limit:
            raise ApiError(413, "too_large", f"metadata is larger than {limit} bytes")
        return
    if part.writer is None:  # already refused: drain the rest of its bytes
        return
    try:
        part.writer.write(data)
    except BlobTooLarge as exc:
        part.writer = None
        part.error = ("too_large", f"the file is {exc}")


def _metadata(received: Received, raw: bytes) -> dict[str, Any]:
    try:
        checked: dict[str, Any] = checked_json(json_object_text(raw, "metadata"), "metadata")
        taken = [key for key in SERVER_METADATA if key in checked]
        if taken:  # they would be overwritten without a word: refused instead
            field = f"metadata.{taken[0]}"
            message = f"{field} is set by the server for each file ({', '.join(SERVER_METADATA)}); use another key"
            raise ApiError(400, "validation_error", message, {"field": field, "reserved": list(SERVER_METADATA)})
    except ApiError:
        received.discard()
        raise
    return checked


async def ingest_all(
    request: Request[Any, Any, Any], container: ApiContainer, received: Received
) -> tuple[list[Uploaded], list[Failed]]:
    """Check, store and submit each file in order; a file's failure does not stop the others."""
    uploaded: list[Uploaded] = []
    failed: list[Failed] = []
    actor = actor_of(request)
    for index, part in enumerate(received.parts):
        try:
            uploaded.append(await _ingest_one(request, container, received.metadata, index, part, actor.user_id))
        except ApiError as exc:
            failed.append(Failed(part.filename, exc.reason, exc.message))
        finally:
            if part.writer is not None:
                part.writer.abort()  # a no-op once committed; removes the temp file otherwise
    return uploaded, failed


async def _ingest_one(
    request: Request[Any, Any, Any],
    container: ApiContainer,
    metadata: dict[str, Any],
    index: int,
    part: Part,
    owner: str,
) -> Uploaded:
    if part.error is not None or part.writer is None:
        reason, message = part.error or ("invalid", "the file was refused")
        raise ApiError(413 if reason == "too_large" else 422, reason, message)
    declared = part.declared if part.declared and _valid_type(part.declared) else None
    if part.declared and declared is None:
        raise ApiError(422, "invalid_content_type", f"{part.declared!r} is not a media type")
    try:
        content_type = decide(part.writer.head, declared, part.filename)
    except ContentTypeMismatch as exc:
        raise ApiError(422, "content_type_mismatch", str(exc)) from exc
    blob = await asyncio.to_thread(part.writer.commit)
    object_id = derived_id(request, f"upload:{index}") or random_uuid()
    payload = {
        "content_type": content_type,
        "content_hash": blob.content_hash,
        "size": blob.size,
        "location": blob.location,
        "metadata": {
            **metadata,
            "filename": part.filename,
            "size": blob.size,
            "sha256": blob.content_hash,
            "owner": owner,
        },
        "annotations": [],
    }
    outcome = await submit(request, container, "IngestData", object_id, payload)
    return Uploaded(part.filename, object_id, blob.size, content_type, outcome)


def _valid_type(content_type: str) -> bool:
    return re.match(CONTENT_TYPE_PATTERN, content_type) is not None
