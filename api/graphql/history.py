"""GraphQL ``history(aggregateId, first, after)``: an aggregate's events as a Relay-style connection."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from api.audit_service import history
from api.graphql.context import GraphQLContext
from api.graphql.errors import answer, require
from api.rbac import Permission

GqlInfo = Info[GraphQLContext, None]


@strawberry.type(description="One event of an aggregate, as GET /api/v1/audit/{aggregate_id} shows it")
class AuditEvent:
    seq: int
    event_id: str
    aggregate_id: str
    aggregate_type: str
    version: int
    event_type: str
    schema_version: int
    timestamp: datetime
    recorded_at: datetime
    actor: str
    actor_role: str
    command_id: str
    correlation_id: str
    causation_id: str
    prev_hash: str
    hash: str
    position: str
    data: JSON


@strawberry.type
class AuditEventEdge:
    cursor: str
    node: AuditEvent


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class AuditEventConnection:
    edges: list[AuditEventEdge]
    page_info: PageInfo


def _edge(event: dict[str, Any]) -> AuditEventEdge:
    return AuditEventEdge(cursor=str(event["version"]), node=AuditEvent(**event))


@strawberry.type
class HistoryQuery:
    @strawberry.field(
        description="An aggregate's events in version order (its owner or an admin; an error with code 404"
        " otherwise); `after` is a cursor of an earlier edge, `first` 1..500"
    )
    async def history(
        self, info: GqlInfo, aggregate_id: str, first: int = 100, after: str | None = None
    ) -> AuditEventConnection:
        require(info.context.connection, Permission.READ)
        page = await answer(history(info.context.connection, info.context.container, aggregate_id, after, first))
        edges = [_edge(event) for event in page.events]
        end = edges[-1].cursor if edges else None
        return AuditEventConnection(
            edges=edges, page_info=PageInfo(has_next_page=page.next_cursor is not None, end_cursor=end)
        )
