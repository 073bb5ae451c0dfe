"""GraphQL: the spec's queries, mutations and subscriptions, over the same use cases as REST."""

from __future__ import annotations

from typing import Any

import msgspec
import strawberry
from graphql import GraphQLError
from strawberry.scalars import JSON
from strawberry.types import Info

from api import data_service
from api.as_of import object_as_of
from api.auth import actor_of
from api.graphql.chat import ChatMutation, ChatQuery
from api.graphql.context import GraphQLContext
from api.graphql.data_changes import DataChangeSubscription
from api.graphql.errors import answer, check_page, parsed, require
from api.graphql.events import EventSubscription
from api.graphql.executions import ExecutionMutation, ExecutionQuery, ExecutionSubscription
from api.graphql.history import HistoryQuery
from api.graphql.limits import limit_extensions
from api.graphql.masking import ErrorEnvelope, LoggedSchema
from api.graphql.notifications import NotificationQuery, NotificationSubscription
from api.graphql.objects import Annotation, DataObject, to_object
from api.inputs import AnnotationCreate, DataIngestionRequest
from api.rbac import Permission
from api.rest.search import check_filters, run_search
from infra.runtime.settings import GraphQLSettings

GqlInfo = Info[GraphQLContext, None]


@strawberry.type
class Deletion:
    object_id: str
    version: int
    position: str | None


@strawberry.type
class Query(ExecutionQuery, NotificationQuery, ChatQuery, HistoryQuery):
    @strawberry.field(
        description="Get a single data object by id (waiting for consistency_token if given); with asOf (a version"
        " number or an RFC 3339 time) as it was then, folded from its events"
    )
    async def data_object(
        self, info: GqlInfo, object_id: str, consistency_token: str | None = None, as_of: str | None = None
    ) -> DataObject | None:
        require(info.context.connection, Permission.READ)
        connection, container = info.context.connection, info.context.container
        try:
            if as_of is not None:
                past = await answer(object_as_of(connection, container, object_id, as_of, consistency_token))
                return to_object(past)  # its "annotations": those of then
            row = await answer(data_service.read(connection, container, object_id, consistency_token))
        except GraphQLError as exc:
            if (exc.extensions or {}).get("code") == 404:
                return None
            raise
        return to_object(row)

    @strawberry.field(
        description="Search over data objects, as GET /api/v1/search: modality text (query in web-search syntax)"
        " or metadata (filters alone, no query); with consistency_token, after the read models applied that write"
    )
    async def search_objects(
        self,
        info: GqlInfo,
        query: str | None = None,
        modality: str = "text",
        limit: int = 10,
        offset: int = 0,
        filters: JSON | None = None,
        consistency_token: str | None = None,
    ) -> list[DataObject]:
        require(info.context.connection, Permission.READ)
        check_page(limit, offset, 100, 10_000)
        checked = await answer(_checked(filters))
        actor = actor_of(info.context.connection)
        container = info.context.container
        results = await answer(run_search(container, actor, query, modality, limit, offset, checked, consistency_token))
        return [to_object(_as_row(hit)) for hit in results.results]


async def _checked(filters: Any) -> dict[str, Any]:
    return {} if filters is None else check_filters(filters)


@strawberry.type
class Mutation(ExecutionMutation, ChatMutation):
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
class Subscription(ExecutionSubscription, DataChangeSubscription, NotificationSubscription, EventSubscription):
    pass


def build_schema(settings: GraphQLSettings) -> strawberry.Schema:
    """The schema under the limits of ``settings`` (api.graphql.limits), answering errors as envelopes."""
    extensions = [*limit_extensions(settings), ErrorEnvelope]
    return LoggedSchema(query=Query, mutation=Mutation, subscription=Subscription, extensions=extensions)


def _as_row(hit: Any) -> dict[str, Any]:
    """A search hit (a REST struct) as a row, its annotations (served with it, no loader) as dicts too."""
    row = msgspec.structs.asdict(hit)
    row["annotations"] = [msgspec.structs.asdict(annotation) for annotation in hit.annotations]
    return row
