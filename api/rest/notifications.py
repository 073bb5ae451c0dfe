"""REST: the caller's notifications (the read model of projections/notifications.py), and marking them read
(a MarkNotificationsRead command to the caller's Inbox, so the marks are events a rebuild keeps)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter

from api.auth import actor_of
from api.commands import submit, wait_for_position
from api.rbac import Permission, requires
from api.rest.paging import MAX_OFFSET
from commands.inbox import NotificationId
from domain.inbox import inbox_id
from infra.runtime.bootstrap import ApiContainer
from projections.notifications import count_unread, list_notifications


class Notification(msgspec.Struct):
    notification_id: str
    kind: str  # execution_completed, execution_failed, object_annotated, object_deleted, role_changed
    message: str
    data: dict[str, Any]
    created_at: datetime
    read_at: datetime | None


class MarkRead(msgspec.Struct, forbid_unknown_fields=True):
    ids: Annotated[list[NotificationId], msgspec.Meta(max_length=1000)] | None = None  # None: all of them


class Marked(msgspec.Struct):
    marked: int


def to_notification(row: dict[str, Any]) -> Notification:
    return Notification(
        notification_id=row["notification_id"],
        kind=row["kind"],
        message=row["message"],
        data=row["data"],
        created_at=row["created_at"],
        read_at=row["read_at"],
    )


class NotificationsController(Controller):
    path = "/api/v1/notifications"
    tags = ["notifications"]

    @get("/", operation_id="listNotifications", summary="Your notifications", opt=requires(Permission.READ))
    async def list_mine(
        self,
        request: Request[Any, Any, Any],
        container: NamedDependency[ApiContainer],
        unread: Annotated[bool, QueryParameter()] = False,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> list[Notification]:
        """The caller's notifications, newest first (``unread=true``: only those not yet marked read)."""
        async with container.pool.connection() as conn:
            rows = await list_notifications(conn, actor_of(request).user_id, unread, limit, offset)
        return [to_notification(row) for row in rows]

    @post(
        "/read",
        operation_id="markNotificationsRead",
        status_code=200,
        summary="Mark your notifications read",
        opt=requires(Permission.READ),
    )
    async def read(
        self, request: Request[Any, Any, Any], data: JSONBody[MarkRead], container: NamedDependency[ApiContainer]
    ) -> Marked:
        """Mark the given notifications (or all, without ``ids``) read; answers how many were unread.

        The answer comes once the read model shows the marks, so a list right after it has them.
        """
        user_id = actor_of(request).user_id
        async with container.pool.connection() as conn:
            marked = await count_unread(conn, user_id, data.ids)
        outcome = await submit(request, container, "MarkNotificationsRead", str(inbox_id(user_id)), {"ids": data.ids})
        await wait_for_position(container, outcome)
        return Marked(marked)
