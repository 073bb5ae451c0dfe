"""The data_objects read model: one row per live object; deleted objects drop out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from projections.events import EventRecord
from projections.projector import Handler, Projector
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
    return "\n".join(parts)


class DataObjectsProjector(Projector):
    name = "data_objects"

    def __init__(self, load_content: ContentLoader | None = None) -> None:
        self.load_content = load_content or (lambda _hash, _type: None)

    def handlers(self) -> dict[str, Handler]:
        return {
            "DataObject.Ingested": self.on_ingested,
            "DataObject.Annotated": self.on_annotated,
            "DataObject.Deleted": self.on_deleted,
        }

    async def on_ingested(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        e = record.event
        # Reading the blob and extracting (a PDF can take a while) stay off the projection's loop.
        text = await asyncio.to_thread(
            lambda: searchable_text(e.content_type, self.load_content(e.content_hash, e.content_type), e.metadata)
        )
        await cur.execute(
            "INSERT INTO data_objects (object_id, object_type, content_type, content_hash, storage_location, size,"
            " metadata, owner, version, created_at, updated_at, search)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s, to_tsvector('simple', %s))",
            (
                record.aggregate_id,
                object_type(e.content_type),
                e.content_type,
                e.content_hash,
                e.location,
                e.size,
                Jsonb(e.metadata),
                e.owner,
                record.version,
                e.timestamp,
                e.timestamp,
                text,
            ),
        )

    async def on_annotated(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        await cur.execute(
            "UPDATE data_objects SET version = %s, updated_at = %s WHERE object_id = %s",
            (record.version, record.event.timestamp, record.aggregate_id),
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


SEARCH_FILTERS = {"content_type", "object_type", "owner", "metadata"}


async def search_data_objects(
    conn: AsyncConnection[Any], query: str, filters: dict[str, Any], limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """Objects matching ``query`` (web-search syntax) and ``filters``, best first, with the total count."""
    where = ["search @@ q"]
    params: list[Any] = [query]
    for key in ("content_type", "object_type", "owner"):
        if key in filters:
            where.append(f"{key} = %s")
            params.append(str(filters[key]))
    if "metadata" in filters:
        where.append("metadata @> %s::jsonb")
        params.append(orjson.dumps(filters["metadata"]).decode())
    params += [limit, offset]
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS}, ts_rank(search, q) AS score, count(*) OVER () AS total"
            " FROM data_objects, websearch_to_tsquery('simple', %s) AS q"
            f" WHERE {' AND '.join(where)} ORDER BY score DESC, created_at DESC LIMIT %s OFFSET %s",
            params,
        )
        rows = await cur.fetchall()
    total = int(rows[0].pop("total")) if rows else 0
    for row in rows[1:]:
        row.pop("total")
    return rows, total


async def search_objects(conn: AsyncConnection[Any], query: str, limit: int, owner: str | None) -> list[dict[str, Any]]:
    """``owner``'s objects (everyone's for None) whose metadata, content type or kind contains ``query``
    (case-insensitive), newest first."""
    pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT object_id::text AS object_id, object_type, content_type, size, metadata, created_at"
            " FROM data_objects WHERE (%s::text IS NULL OR owner = %s)"
            " AND (metadata::text ILIKE %s OR content_type ILIKE %s OR object_type ILIKE %s)"
            " ORDER BY created_at DESC, object_id LIMIT %s",
            (owner, owner, pattern, pattern, pattern, limit),
        )
        rows = await cur.fetchall()
    return [{**row, "created_at": row["created_at"].isoformat()} for row in rows]


async def content_hashes(conn: AsyncConnection[Any]) -> list[tuple[str, str]]:
    """(object_id, content_hash) of every live object: what the log says the blob store holds."""
    cur = await conn.execute("SELECT object_id::text, content_hash FROM data_objects ORDER BY object_id")
    return [(str(object_id), str(content_hash)) for object_id, content_hash in await cur.fetchall()]
