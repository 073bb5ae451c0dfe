"""GraphQL: the spec's queries, mutations and subscriptions, over the same use cases as REST."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any

import msgspec
import strawberry
from graphql import GraphQLError
from strawberry.scalars import JSON
from strawberry.types import Info

from api import data_service
from api.auth import actor_of
from api.graphql.context import GraphQLContext
from api.graphql.errors import answer, parsed, require
from api.graphql.executions import ExecutionMutation, ExecutionQuery, ExecutionSubscription
from api.graphql.limits import limit_extensions
from api.graphql.live import live_caller
from api.graphql.masking import ErrorEnvelope, LoggedSchema
from api.inputs import AnnotationCreate, DataIngestionRequest
from api.live_rights import mentions_user
from api.rbac import Permission, can_see
from api.rest.content import content_url
from api.rest.search import check_filters, run_search
from infra.settings import GraphQLSettings
from projections.data_objects import get_data_object

GqlInfo = Info[GraphQLContext, None]


@strawberry.type
class Annotation:
    annotation_id: str
    annotator_id: str
    annotation_type: str
    content: JSON
    confidence: float
    created_at: datetime


@strawberry.type
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

    @strawberry.field
    async def annotations(self, info: GqlInfo) -> list[Annotation]:
        return [Annotation(**row) for row in await info.context.annotations.load(self.object_id)]

    @strawberry.field(
        description="The content as text for text and JSON objects up to storage.inline_content_bytes;"
        " null otherwise (read the bytes at contentUrl)"
    )
    async def content(self, info: GqlInfo) -> str | None:
        container = info.context.container
        if self.object_type not in ("text", "json") or self.size > container.settings.storage.inline_content_bytes:
            return None
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


@strawberry.type
class DataChange:
    object_id: str
    change_type: str  # Ingested, Annotated, Deleted
    version: int
    data: DataObject | None  # the object as the read model has it now; None once deleted


@strawberry.type
class Deletion:
    object_id: str
    version: int
    position: str | None


def to_object(row: dict[str, Any]) -> DataObject:
    fields = {k: v for k, v in row.items() if k in DataObject.__annotations__}
    return DataObject(**fields)


@strawberry.type
class Query(ExecutionQuery):
    @strawberry.field(description="Get a single data object by id (waiting for consistency_token if given)")
    async def data_object(
        self, info: GqlInfo, object_id: str, consistency_token: str | None = None
    ) -> DataObject | None:
        require(info.context.connection, Permission.READ)
        try:
            row = await answer(
                data_service.read(info.context.connection, info.context.container, object_id, consistency_token)
            )
        except GraphQLError as exc:
            if (exc.extensions or {}).get("code") == 404:
                return None
            raise
        return to_object(row)

    @strawberry.field(
        description="Search over data objects, as GET /api/v1/search: modality text (query in web-search syntax)"
        " or metadata (filters alone, no query)"
    )
    async def search_objects(
        self,
        info: GqlInfo,
        query: str | None = None,
        modality: str = "text",
        limit: int = 10,
        offset: int = 0,
        filters: JSON | None = None,
    ) -> list[DataObject]:
        require(info.context.connection, Permission.READ)
        if not 1 <= limit <= 100 or not 0 <= offset <= 10_000:
            raise GraphQLError(
                "limit must be 1..100 and offset 0..10000", extensions={"code": 400, "reason": "validation_error"}
            )
        checked = await answer(_checked(filters))
        actor = actor_of(info.context.connection)
        results = await answer(run_search(info.context.container, actor, query, modality, limit, offset, checked))
        return [to_object(msgspec.structs.asdict(hit)) for hit in results.results]


async def _checked(filters: Any) -> dict[str, Any]:
    return {} if filters is None else check_filters(filters)


@strawberry.type
class Mutation(ExecutionMutation):
    @strawberry.mutation(description="Ingest new data; returns the object once the read model has it")
    async def ingest_data(
        self,
        info: GqlInfo,
        content: str,
        content_type: str,
        metadata: JSON | None = None,
        annotations: list[str] | None = None,
    ) -> DataObject:
        require(info.context.connection, Permission.WRITE)
        request = parsed(
            DataIngestionRequest, content=content, content_type=content_type, metadata=metadata, annotations=annotations
        )
        ctx = info.context
        written = await answer(data_service.ingest(ctx.connection, ctx.container, request))
        return to_object(
            await answer(
                data_service.read(ctx.connection, ctx.container, written.aggregate_id, written.outcome.position)
            )
        )

    @strawberry.mutation(description="Add an annotation to a data object")
    async def add_annotation(
        self,
        info: GqlInfo,
        object_id: str,
        annotation_type: str,
        content: JSON,
        confidence: float = 1.0,
        expected_version: int | None = None,
    ) -> Annotation:
        require(info.context.connection, Permission.WRITE)
        request = parsed(AnnotationCreate, annotation_type=annotation_type, content=content, confidence=confidence)
        ctx = info.context
        written = await answer(
            data_service.annotate(ctx.connection, ctx.container, object_id, request, expected_version)
        )
        row = await answer(data_service.read(ctx.connection, ctx.container, object_id, written.outcome.position))
        return next(Annotation(**a) for a in row["annotations"] if a["annotation_id"] == written.created_id)

    @strawberry.mutation(description="Delete a data object")
    async def delete_data_object(self, info: GqlInfo, object_id: str, expected_version: int | None = None) -> Deletion:
        require(info.context.connection, Permission.WRITE)
        ctx = info.context
        written = await answer(data_service.delete(ctx.connection, ctx.container, object_id, expected_version))
        return Deletion(object_id=object_id, version=written.outcome.version, position=written.outcome.position)


@strawberry.type
class Subscription(ExecutionSubscription):
    @strawberry.subscription(description="Data objects as they change; filters: {object_id?, change_type?}")
    async def data_changes(self, info: GqlInfo, filters: JSON | None = None) -> AsyncGenerator[DataChange, None]:
        require(info.context.connection, Permission.READ)
        wanted: dict[str, Any] = filters if isinstance(filters, dict) else {}
        container = info.context.container
        actor = actor_of(info.context.connection)
        visible: set[str] = set()  # objects this caller has seen, so their deletion can be told too
        queue = container.changes.subscribe()
        try:
            while True:
                message = await queue.get()
                changes = _wanted_changes(message, wanted)
                if not changes and not mentions_user(message, actor.user_id):
                    continue
                now = await live_caller(info.context.connection, message)  # a disabled caller ends here
                if now != actor:
                    visible.clear()  # what an admin saw is not what a user may hear deleted
                    actor = now
                for change, kind in changes:
                    async with container.pool.connection() as conn:
                        row = await get_data_object(conn, change["id"])
                    if row is not None and can_see(actor.role, actor.user_id, row["owner"]):
                        visible.add(change["id"])
                    elif not (row is None and (change["id"] in visible or actor.role == "admin")):
                        continue
                    data = to_object(row) if row is not None else None
                    yield DataChange(object_id=change["id"], change_type=kind, version=change["version"], data=data)
        except asyncio.CancelledError:
            raise
        finally:
            container.changes.unsubscribe(queue)


def _wanted_changes(message: dict[str, Any], wanted: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(change, kind) for the message's data object changes that pass the subscription's filters."""
    found = []
    for change in message.get("changes", []):
        aggregate, _, kind = change["type"].partition(".")
        if aggregate != "DataObject":
            continue
        if wanted.get("object_id") in (None, change["id"]) and wanted.get("change_type") in (None, kind):
            found.append((change, kind))
    return found


def build_schema(settings: GraphQLSettings) -> strawberry.Schema:
    """The schema under the limits of ``settings`` (api.graphql.limits), answering errors as envelopes."""
    extensions = [*limit_extensions(settings), ErrorEnvelope]
    return LoggedSchema(query=Query, mutation=Mutation, subscription=Subscription, extensions=extensions)
