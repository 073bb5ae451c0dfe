"""The annotations read model: every annotation of every live object."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from projections.events import EventRecord
from projections.projector import Handler, Projector


class AnnotationsProjector(Projector):
    name = "annotations"

    def handlers(self) -> dict[str, Handler]:
        return {"DataObject.Annotated": self.on_annotated, "DataObject.Deleted": self.on_deleted}

    async def on_annotated(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        e = record.event
        await cur.execute(
            "INSERT INTO annotations (annotation_id, object_id, annotator_id, annotation_type, content, confidence,"
            " created_at) VALUES (%s,%s,%s,%s,%s,%s,%s)",
            (
                e.annotation_id,
                record.aggregate_id,
                e.annotator,
                e.annotation_type,
                Jsonb(e.content),
                e.confidence,
                e.timestamp,
            ),
        )

    async def on_deleted(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        await cur.execute("DELETE FROM annotations WHERE object_id = %s", (record.aggregate_id,))


async def annotations_of_many(conn: AsyncConnection[Any], object_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Annotations of several objects in one query (for DataLoaders), oldest first per object."""
    found: dict[str, list[dict[str, Any]]] = {}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT object_id::text AS object_id, annotation_id, annotator_id, annotation_type, content, confidence,"
            " created_at FROM annotations WHERE object_id = ANY(%s::uuid[]) ORDER BY created_at, annotation_id",
            (object_ids,),
        )
        for row in await cur.fetchall():
            found.setdefault(row.pop("object_id"), []).append(row)
    return found
