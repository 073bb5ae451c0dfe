"""The annotations read model: every annotation of every live object."""

from __future__ import annotations

from typing import Any

import orjson
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import dict_row

from projections.events import EventRecord
from projections.projector import BatchHandler, Handler, Projector, columns, copy_rows


class AnnotationsProjector(Projector):
    name = "annotations"
    tables = ("annotations",)
    fill_indexes = ("annotations_object",)  # on_deleted deletes by object_id

    def handlers(self) -> dict[str, Handler]:
        return {"DataObject.Deleted": self.on_deleted}

    def batch_handlers(self) -> dict[str, BatchHandler]:
        return {"DataObject.Annotated": self.on_annotated}

    async def on_annotated(self, cur: AsyncCursor[Any], records: list[EventRecord]) -> None:
        rows = (
            (
                r.event.annotation_id,
                r.aggregate_id,
                r.event.annotator,
                r.event.annotation_type,
                orjson.dumps(r.event.content).decode(),
                r.event.confidence,
                r.event.source,
                r.event.timestamp,
            )
            for r in records
        )
        if self.bulk:
            await copy_rows(cur, "annotations", _COPIED, rows)
            return
        await cur.execute(
            "INSERT INTO annotations (annotation_id, object_id, annotator_id, annotation_type, content, confidence,"
            " source, created_at) SELECT * FROM unnest(%b::text[], %b::uuid[], %b::text[], %b::text[], %b::jsonb[],"
            " %b::float8[], %b::text[], %b::timestamptz[])",
            columns(rows, 8),
        )

    async def on_deleted(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        await cur.execute("DELETE FROM annotations WHERE object_id = %s", (record.aggregate_id,))


# The columns and types of on_annotated's rows, for copy_rows.
_COPIED = (
    ("annotation_id", "text"),
    ("object_id", "uuid"),
    ("annotator_id", "text"),
    ("annotation_type", "text"),
    ("content", "jsonb"),
    ("confidence", "float8"),
    ("source", "text"),
    ("created_at", "timestamptz"),
)


async def annotations_of_many(conn: AsyncConnection[Any], object_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Annotations of several objects in one query (for DataLoaders), oldest first per object."""
    found: dict[str, list[dict[str, Any]]] = {}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT object_id::text AS object_id, annotation_id, annotator_id, annotation_type, content, confidence,"
            " source, created_at FROM annotations WHERE object_id = ANY(%b::uuid[]) ORDER BY created_at, annotation_id",
            (object_ids,),
        )
        for row in await cur.fetchall():
            found.setdefault(row.pop("object_id"), []).append(row)
    return found
