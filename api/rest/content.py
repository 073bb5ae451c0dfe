"""REST: an object's bytes back, as stored: ETag (its sha256), Content-Length, Range and 304."""

from __future__ import annotations

import re
import uuid
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Stream
from psycopg import AsyncConnection

from api import data_service
from api.errors import ApiError
from api.rbac import Permission, requires
from infra.adapters.blobstore import BlobNotFound
from infra.runtime.bootstrap import ApiContainer
from projections.data_objects import get_data_object

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def content_url(object_id: str) -> str:
    """Where an object's bytes are served (GraphQL's ``contentUrl`` points here)."""
    return f"/api/v1/data/{object_id}/content"


def _position(digits: str) -> int:
    """A byte position of a Range header; one beyond any size when it has more digits than a size can
    (int() of thousands of digits raises, and nothing is that large)."""
    return int(digits) if len(digits) <= 18 else 10**18


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (start, end) a ``Range`` header asks for; None for the whole body.

    One range only (several ranges, or another unit, are answered with the whole body, as RFC 9110
    allows); a range that starts past the end is 416.
    """
    if not header:
        return None
    found = _RANGE.match(header.strip())
    if found is None:
        return None
    first, last = found.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        start, end = max(size - _position(last), 0), size - 1
    else:
        start, end = _position(first), min(_position(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise ApiError(
            416,
            "range_not_satisfiable",
            f"range {header!r} is outside the content's {size} bytes",
            {"size": size},
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


async def object_with_content(conn: AsyncConnection[Any], object_id: str) -> dict[str, Any] | None:
    """The object's row with the content the log carries (inline objects; None for blob-stored ones)."""
    return await get_data_object(conn, object_id, with_content=True)


class ContentController(Controller):
    path = "/api/v1"
    tags = ["data"]

    @get(
        "/data/{object_id:uuid}/content",
        operation_id="getDataContent",
        summary="The object's bytes with its content type; Range and If-None-Match (its owner or an admin)",
        # Ranges, the ETag and Content-Length are of the stored bytes: never compressed on the way out.
        opt={**requires(Permission.READ), "binary_content": True, "uncompressed": True},
    )
    async def content(
        self, request: Request[Any, Any, Any], object_id: FromPath[uuid.UUID], container: NamedDependency[ApiContainer]
    ) -> Any:
        row = await data_service.visible_object(request, container, str(object_id), query=object_with_content)
        content_hash, size = row["content_hash"], row["size"]
        etag = f'"{content_hash}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, no-cache"}
        if _matches(request.headers.get("if-none-match"), etag):
            return Response(b"", status_code=304, headers=headers)
        inline = row["content"]  # small content, carried in the log: the read model has the bytes
        if inline is None and not container.blobs.exists(content_hash):
            raise missing(str(object_id), content_hash)
        # If-Range (RFC 9110 section 13.1.5): the range only if the client's copy is this one, else everything.
        if_range = request.headers.get("if-range")
        ranged = size and (if_range is None or if_range.strip() == etag)
        wanted = byte_range(request.headers.get("range"), size) if ranged else None
        start, end = wanted or (0, size - 1)
        try:
            chunks = (
                iter([inline.encode()[start : end + 1]])
                if inline is not None
                else container.blobs.read_range(content_hash, start, end)
            )
        except BlobNotFound as exc:
            raise missing(str(object_id), content_hash) from exc
        headers["Content-Length"] = str(end - start + 1 if size else 0)
        # In the headers, not only media_type: litestar lets the route's default (JSON) win over a Stream's.
        headers["Content-Type"] = row["content_type"]
        status = 200
        if wanted is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return Stream(chunks, status_code=status, media_type=row["content_type"], headers=headers)


def missing(object_id: str, content_hash: str) -> ApiError:
    """The log names a blob the store lacks: not the client's fault and not a crash (see /health)."""
    return ApiError(
        410,
        "content_missing",
        f"the content of {object_id} is missing from the blob store; an operator can run `pipeline blobs check`",
        {"content_hash": content_hash},
    )
