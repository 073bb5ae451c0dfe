"""The data_objects read model: one row per live object; deleted objects drop out."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from projections.events import EventRecord
from projections.projector import Handler, Projector


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


class DataObjectsProjector(Projector):
    name = "data_objects"

    def handlers(self) -> dict[str, Handler]:
        return {
            "DataObject.Ingested": self.on_ingested,
            "DataObject.Annotated": self.on_annotated,
            "DataObject.Deleted": self.on_deleted,
        }

    async def on_ingested(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        e = record.event
        await cur.execute(
            "INSERT INTO data_objects (object_id, object_type, content_type, content_hash, storage_location, size,"
            " metadata, owner, version, created_at, updated_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
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


async def search_objects(conn: AsyncConnection[Any], query: str, limit: int) -> list[dict[str, Any]]:
    """Objects whose metadata, content type or kind contains ``query`` (case-insensitive), newest first."""
    pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT object_id::text AS object_id, object_type, content_type, size, metadata, created_at"
            " FROM data_objects WHERE metadata::text ILIKE %s OR content_type ILIKE %s OR object_type ILIKE %s"
            " ORDER BY created_at DESC, object_id LIMIT %s",
            (pattern, pattern, pattern, limit),
        )
        rows = await cur.fetchall()
    return [{**row, "created_at": row["created_at"].isoformat()} for row in rows]
