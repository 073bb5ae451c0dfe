"""REST: an aggregate's history, and events across aggregates (api.audit_service)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from api import audit_service
from api.rbac import Permission, requires
from api.rest.data import ConsistencyToken
from infra.runtime.bootstrap import ApiContainer


class AuditEvent(msgspec.Struct):
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
    data: dict[str, Any]


class AuditPage(msgspec.Struct):
    events: list[AuditEvent]
    next_cursor: str | None


Cursor = Annotated[
    str | None,
    QueryParameter(
        name="after", required=False, pattern=r"^[0-9]{1,18}$", description="The next_cursor of the previous page"
    ),
]
Limit = Annotated[
    int | None, QueryParameter(name="limit", required=False, ge=1, le=500, description="Events per page, 1..500 (100)")
]
Word = audit_service.TYPE_WORD


def _time(name: str, description: str) -> Any:
    return QueryParameter(name=name, required=False, description=description, schema_extra={"format": "date-time"})


def _page(page: audit_service.Page) -> AuditPage:
    return AuditPage([msgspec.convert(e, AuditEvent) for e in page.events], page.next_cursor)


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["audit"]

    @get(
        "/{aggregate_id:str}",
        operation_id="getAggregateHistory",
        summary="An aggregate's events in order, with their hash chain (its owner or an admin)",
        opt=requires(Permission.READ),
    )
    async def history(
        self,
        request: Request[Any, Any, Any],
        aggregate_id: FromPath[str],
        container: NamedDependency[ApiContainer],
        after: Cursor = None,
        limit: Limit = None,
        consistency_token: ConsistencyToken = None,
    ) -> AuditPage:
        token = consistency_token or request.headers.get("x-consistency-token")
        return _page(await audit_service.history(request, container, aggregate_id, after, limit, token))

    @get(
        "/",
        operation_id="searchAuditLog",
        summary="Events across aggregates in global order, filtered (admins only)",
        opt=requires(Permission.ADMIN),
    )
    async def search(
        self,
        container: NamedDependency[ApiContainer],
        actor: Annotated[
            str | None,
            QueryParameter(name="actor", required=False, description="A user id", schema_extra={"format": "uuid"}),
        ] = None,
        event_type: Annotated[
            str | None,
            QueryParameter(name="type", required=False, pattern=Word, description="An event type: DataObject.Ingested"),
        ] = None,
        aggregate_type: Annotated[
            str | None,
            QueryParameter(
                name="aggregate_type", required=False, pattern=Word, description="DataObject, Execution, User"
            ),
        ] = None,
        occurred_from: Annotated[str | None, _time("from", "RFC 3339 with a time zone, inclusive")] = None,
        occurred_to: Annotated[str | None, _time("to", "RFC 3339 with a time zone, exclusive")] = None,
        after: Cursor = None,
        limit: Limit = None,
    ) -> AuditPage:
        chosen = audit_service.filters(actor, event_type, aggregate_type, occurred_from, occurred_to)
        return _page(await audit_service.search(container, chosen, after, limit))
