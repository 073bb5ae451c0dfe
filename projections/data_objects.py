"""The data_objects read model: one row per live object; deleted objects drop out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import dict_row

from projections.events import EventRecord
from projections.projector import BatchHandler, Handler, Projector, columns
from projections.search import SNIPPET_SOURCE_CHARS
from projections.text_extraction import extract_text


def object_type(content_type: str) -> str:
    """A coarse kind for the spec's ``object_type``: text, json, image, audio, video or binary."""
    main, _, sub = content_type.partition("/")
    if main == "text":
        return "text"
    if sub == "json" or sub.endswith("+json"):
        return "json"
    if main in {"image", "audio", "video"}:
        return main
    return "binary"


# content hash, content type -> the bytes extraction needs (bounded, see text_extraction), None when absent
ContentLoader = Callable[[str, str], bytes | None]


def searchable_text(content_type: str, content: bytes | None, metadata: dict[str, Any]) -> str:
    """What full-text search sees: the content's text (projections.text_extraction) and the metadata's values."""
    parts = [str(value) for value in metadata.values() if isinstance(value, str | int | float)]
    if content is not None:
        parts.append(extract_text(content_type, content))
    return "\n".join(parts).replace("\x00", " ")  # PostgreSQL text takes no NUL (a PDF's text may have one)


class DataObjectsProjector(Projector):
    name = "data_objects"
    tables = ("data_objects",)

    def __init__(self, load_content: ContentLoader | None = None, language: str = "simple") -> None:
        self.load_content = load_content or (lambda _hash, _type: None)
        self.language = language  # the text search configuration; search queries must use the same

    def handlers(self) -> dict[str, Handler]:
        return {"DataObject.Deleted": self.on_deleted}

    def batch_handlers(self) -> dict[str, BatchHandler]:
        return {"DataObject.Ingested": self.on_ingested, "DataObject.Annotated": self.on_annotated}

    async def on_ingested(self, cur: AsyncCursor[Any], records: list[EventRecord]) -> None:
        # Reading the blobs and extracting (a PDF can take a while) stay off the projection's loop.
        texts = await asyncio.to_thread(lambda: [self._text(r.event) for r in records])
        rows = (
            (
                r.aggregate_id,
                object_type(r.event.content_type),
                r.event.content_type,
                r.event.content_hash,
                r.event.location,
                r.event.size,
                orjson.dumps(r.event.metadata).decode(),
                r.event.owner,
                r.version,
                r.event.timestamp,
                text,
            )
            for r, text in zip(records, texts, strict=True)
        )
        await cur.execute(
            "INSERT INTO data_objects (object_id, object_type, content_type, content_hash, storage_location, size,"
            " metadata, owner, version, created_at, updated_at, search, search_text)"
            " SELECT id, kind, type, hash, location, size, metadata, owner, version, at, at,"
            " to_tsvector(%s::regconfig, text), left(text, %s)"
            " FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int8[], %s::jsonb[],"
            " %s::text[], %s::int4[], %s::timestamptz[], %s::text[])"
            " AS u(id, kind, type, hash, location, size, metadata, owner, version, at, text)",
            [self.language, SNIPPET_SOURCE_CHARS, *columns(rows, 11)],
        )

    def _text(self, e: Any) -> str:
        return searchable_text(e.content_type, self.load_content(e.content_hash, e.content_type), e.metadata)

    async def on_annotated(self, cur: AsyncCursor[Any], records: list[EventRecord]) -> None:
        latest = {r.aggregate_id: (r.aggregate_id, r.version, r.event.timestamp) for r in records}  # one per row
        await cur.execute(
            "UPDATE data_objects d SET version = u.version, updated_at = u.at"
            " FROM unnest(%s::uuid[], %s::int4[], %s::timestamptz[]) AS u(id, version, at) WHERE d.object_id = u.id",
            columns(latest.values(), 3),
        )

    async def on_deleted(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        await cur.execute("DELETE FROM data_objects WHERE object_id = %s", (record.aggregate_id,))


_COLUMNS = (
    "object_id::text AS object_id, object_type, content_type, content_hash, storage_location, size, metadata,"
    " owner, version, created_at, updated_at"
)


async def get_data_object(conn: AsyncConnection[Any], object_id: str) -> dict[str, Any] | None:
    """One object row, or None."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM data_objects WHERE object_id = %s", (object_id,))
        return await cur.fetchone()


async def content_hashes(conn: AsyncConnection[Any]) -> list[tuple[str, str]]:
    """(object_id, content_hash) of every live object: what the log says the blob store holds."""
    cur = await conn.execute("SELECT object_id::text, content_hash FROM data_objects ORDER BY object_id")
    return [(str(object_id), str(content_hash)) for object_id, content_hash in await cur.fetchall()]
