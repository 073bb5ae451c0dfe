"""GraphQL ``notifications``: the caller's notifications live (subscription) and listed (query)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any

import strawberry
from strawberry.scalars import JSON

from api.auth import actor_of
from api.graphql.errors import check_page, require
from api.graphql.live import live_caller, missed
from api.graphql.objects import GqlInfo
from api.live_rights import mentions_user
from api.rbac import Permission
from projections.notifications import NOTIFYING, list_notifications, notifications_caused_by


@strawberry.type
class Notification:
    notification_id: str
    kind: str
    message: str
    data: JSON
    created_at: datetime
    read_at: datetime | None


def to_notification(row: dict[str, Any]) -> Notification:
    return Notification(**{k: row[k] for k in ("notification_id", "kind", "message", "data", "created_at", "read_at")})


@strawberry.type
class NotificationQuery:
    @strawberry.field(description="Your notifications, newest first")
    async def notifications(
        self, info: GqlInfo, unread: bool = False, limit: int = 50, offset: int = 0
    ) -> list[Notification]:
        require(info.context.connection, Permission.READ)
        check_page(limit, offset, 100, 100_000)
        async with info.context.container.pool.connection() as conn:
            rows = await list_notifications(conn, actor_of(info.context.connection).user_id, unread, limit, offset)
        return [to_notification(row) for row in rows]


@strawberry.type
class NotificationSubscription:
    @strawberry.subscription(description="Your notifications as they happen")
    async def notifications(self, info: GqlInfo) -> AsyncGenerator[Notification, None]:
        require(info.context.connection, Permission.READ)
        container = info.context.container
        user_id = actor_of(info.context.connection).user_id
        queue = container.changes.subscribe()
        try:
            while True:
                message = await queue.get()
                missed(message)
                causes = [(c["id"], c["version"]) for c in message.get("changes", []) if c["type"] in NOTIFYING]
                if not causes and not mentions_user(message, user_id):
                    continue
                await live_caller(info.context.connection, message)  # a disabled caller ends here
                if not causes:
                    continue
                async with container.pool.connection() as conn:
                    rows = await notifications_caused_by(conn, causes)
                for row in rows:
                    if row["user_id"] == user_id:
                        yield to_notification(row)
        finally:
            container.changes.unsubscribe(queue)
