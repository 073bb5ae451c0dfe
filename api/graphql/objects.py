"""The spec's GraphQL ``DataObject`` and ``Annotation`` types, shared by queries and subscriptions."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from api.graphql.context import GraphQLContext
from api.rest.content import content_url
from commands.data import INLINE_PREFIX
from projections.data_objects import get_data_object

GqlInfo = Info[GraphQLContext, None]


@strawberry.enum(description="What happened to a data object (set on dataChanges deliveries only)")
class ChangeType(Enum):
    INGESTED = "INGESTED"
    ANNOTATED = "ANNOTATED"
    DELETED = "DELETED"


@strawberry.type
class Annotation:
    annotation_id: str
    annotator_id: str
    annotation_type: str
    content: JSON
    confidence: float
    source: str = strawberry.field(
        description='who or what made it: "user", "ingest" (labels given at ingest), "graph:<execution id>",'
        ' or "unknown" (written before annotations said so)'
    )
    created_at: datetime


@strawberry.type(description="The spec's DataObject; dataChanges adds changeType (null elsewhere)")
class DataObject:
    object_id: str
    object_type: str
    content_type: str
    content_hash: str
    storage_location: str
    size: int
    metadata: JSON
    owner: str
    version: int
    created_at: datetime
    updated_at: datetime
    change_type: ChangeType | None = None
    # Read with the object (data_service.read: one query); otherwise one loader batch per operation.
    loaded_annotations: strawberry.Private[list[dict[str, Any]] | None] = None
    # Inline content already at hand (an as-of row folded from the events), so no read-model lookup.
    known_content: strawberry.Private[str | None] = None

    @strawberry.field
    async def annotations(self, info: GqlInfo) -> list[Annotation]:
        rows = self.loaded_annotations
        if rows is None:
            rows = await info.context.annotations.load(self.object_id)
        return [Annotation(**row) for row in rows]

    @strawberry.field(
        description="The content as text for text and JSON objects up to storage.inline_content_bytes;"
        " null otherwise (read the bytes at contentUrl)"
    )
    async def content(self, info: GqlInfo) -> str | None:
        container = info.context.container
        if self.object_type not in ("text", "json") or self.size > container.settings.storage.inline_content_bytes:
            return None
        if self.storage_location.startswith(INLINE_PREFIX):  # carried in the log: the read model has it
            if self.known_content is not None:
                return self.known_content
            async with container.pool.connection() as conn:
                row = await get_data_object(conn, self.object_id, with_content=True)
            return None if row is None else row["content"]
        data = await asyncio.to_thread(container.blobs.find, self.content_hash)
        if data is None:  # missing from the store: /health and `pipeline blobs check` report it
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return None

    @strawberry.field(description="Where GET serves the object's bytes (Range, ETag; owner and admins only)")
    def content_url(self) -> str:
        return content_url(self.object_id)


def to_object(row: Mapping[str, Any], change_type: ChangeType | None = None) -> DataObject:
    """The GraphQL object of a read-model row (with its annotations when the row has them)."""
    fields = {k: v for k, v in row.items() if k in _ROW_FIELDS}
    return DataObject(
        **fields, change_type=change_type, loaded_annotations=row.get("annotations"), known_content=row.get("content")
    )


_ROW_FIELDS = frozenset(DataObject.__annotations__) - {"change_type", "loaded_annotations", "known_content"}
