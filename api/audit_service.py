"""The audit use cases every entry point runs: an aggregate's history, and events across aggregates.

Both read the ``audit_log`` read model (projections.audit_log). Who may read an aggregate's history
follows from its first event, so it holds for deleted objects too:

- a data object (``DataObject.*``): its owner (``Ingested.owner``) and admins;
- an execution (``Execution.*``): its submitter and admins;
- a conversation (``Conversation.*``) and an inbox (``Inbox.*``): their owner (``Started``/``Opened.owner``)
  and admins;
- a user (``User.*``): that user and admins;
- any other aggregate type: admins only.

These are the owners the event stream shows an aggregate's events to, so the two never disagree.

Anyone else gets 404, as for objects, so ids cannot be probed. Events across aggregates are for
admins only (the route's guard). Cursors are the ``next_cursor`` of the previous page: a version
for one aggregate's history, the global sequence across aggregates.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from litestar.connection import ASGIConnection

from api.auth import actor_of
from api.data_service import wait_for_token
from api.errors import ApiError
from api.rbac import Role
from commands.envelope import Actor
from infra.runtime.bootstrap import ApiContainer
from projections.audit_log import AuditFilters, aggregate_type, creation_row, event_view, history_rows, search_rows

Connection = ASGIConnection[Any, Any, Any, Any]

DEFAULT_PAGE = 100
MAX_PAGE = 500
MAX_CURSOR = 2**63 - 1
# The creation event's field naming who owns an aggregate of each type (users own themselves).
# The same owners the event stream shows an aggregate's events to (projections/event_stream.py _OWNER).
OWNER_FIELDS = {"DataObject": "owner", "Execution": "submitter", "Conversation": "owner", "Inbox": "owner"}


@dataclass(frozen=True)
class Page:
    events: list[dict[str, Any]]
    next_cursor: str | None  # None on the last page


def aggregate_owner(aggregate_id: str, creation: dict[str, Any]) -> str | None:
    """Who besides admins may read this aggregate's history (see the module docstring), or None."""
    kind = aggregate_type(creation["event_type"])
    if kind == "User":
        return aggregate_id
    field = OWNER_FIELDS.get(kind)
    owner = creation["payload"].get(field) if field else None
    return owner if isinstance(owner, str) else None


def may_read(actor: Actor, aggregate_id: str, creation: dict[str, Any] | None) -> bool:
    """Whether ``actor`` may read the aggregate whose first event is ``creation`` (None: there is none):
    admins any, others their own. History and event streams answer 404 otherwise."""
    return creation is not None and (
        actor.role == Role.ADMIN or aggregate_owner(aggregate_id, creation) == actor.user_id
    )


def cursor(value: str | None, name: str = "after") -> int:
    """A cursor from a previous page (0 when absent); 400 ``invalid_cursor`` for anything else."""
    if value is None:
        return 0
    if not value.isascii() or not value.isdigit() or len(value) > 19 or int(value) > MAX_CURSOR:
        raise ApiError(400, "invalid_cursor", f"{name} must be a cursor from a previous page", {"field": name})
    return int(value)


def page_size(value: int | None) -> int:
    if value is None:
        return DEFAULT_PAGE
    if not 1 <= value <= MAX_PAGE:
        raise ApiError(400, "validation_error", f"limit must be 1..{MAX_PAGE}", {"field": "limit"})
    return value


def instant(value: str | None, name: str) -> datetime | None:
    """An RFC 3339 time with a time zone, or None when absent; 400 naming the parameter otherwise (also empty)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or "T" not in value.upper():
        raise ApiError(400, "validation_error", f"{name} must be an RFC 3339 time with a time zone", {"field": name})
    return moment


def uuid_param(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise ApiError(400, "validation_error", f"{name} must be a UUID", {"field": name}) from exc


# An event or aggregate type filter, as the OpenAPI document states it (api/rest/audit.py) and as checked.
TYPE_WORD = r"^[A-Za-z0-9_.]{1,200}$"
_TYPE_WORD = re.compile(TYPE_WORD)


def filters(
    actor: str | None = None,
    event_type: str | None = None,
    aggregate_type: str | None = None,
    occurred_from: str | None = None,
    occurred_to: str | None = None,
) -> AuditFilters:
    """The cross-aggregate filters from query parameters, each checked (400 naming the bad one)."""
    for name, text in (("type", event_type), ("aggregate_type", aggregate_type)):
        if text and not _TYPE_WORD.fullmatch(text):
            raise ApiError(400, "validation_error", f"{name} must be a word like DataObject.Ingested", {"field": name})
    return AuditFilters(
        actor=uuid_param(actor, "actor"),
        event_type=event_type or None,
        aggregate_type=aggregate_type or None,
        occurred_from=instant(occurred_from, "from"),
        occurred_to=instant(occurred_to, "to"),
    )


async def history(
    connection: Connection,
    container: ApiContainer,
    aggregate_id: str,
    after: str | None,
    limit: int | None,
    token: str | None = None,
) -> Page:
    """An aggregate's events in version order; 404 when it has none or they are not the caller's to read.

    With a consistency ``token`` it first waits until the read models have applied that write.
    """
    after_version, size = cursor(after), page_size(limit)
    await wait_for_token(container, token)
    try:
        aggregate_id = str(uuid.UUID(aggregate_id))
    except ValueError as exc:  # like a path converter: a malformed id names no aggregate
        raise ApiError(404, "not_found", "aggregate does not exist") from exc
    actor = actor_of(connection)
    async with container.pool.connection() as conn:
        if not may_read(actor, aggregate_id, await creation_row(conn, aggregate_id)):
            raise ApiError(404, "not_found", f"aggregate {aggregate_id} does not exist")
        rows = await history_rows(conn, aggregate_id, min(after_version, 2**31 - 1), size + 1)
    events = [event_view(row) for row in rows[:size]]
    return Page(events, str(events[-1]["version"]) if len(rows) > size else None)


async def search(container: ApiContainer, chosen: AuditFilters, after: str | None, limit: int | None) -> Page:
    """Events across aggregates in global sequence order (admins only: the caller checks the role)."""
    after_seq, size = cursor(after), page_size(limit)
    async with container.pool.connection() as conn:
        rows = await search_rows(conn, chosen, after_seq, size + 1)
    events = [event_view(row) for row in rows[:size]]
    return Page(events, str(events[-1]["seq"]) if len(rows) > size else None)
