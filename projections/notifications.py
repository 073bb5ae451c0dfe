"""The notifications read model: what each user should hear about, live and when they come back.

A user is told when their execution completes or fails, when someone else annotates or deletes one
of their objects, and when someone changes their role. The projector keeps who owns each object,
execution and inbox (``notification_subjects``: the object's row is gone once deleted, so the owner
is kept here), and writes one notification per causing event, keyed by the event id (exactly once,
like every projection). ``read_at`` comes from the user's Inbox (domain/inbox.py): each
NotificationsRead is kept (``notification_read_marks``, ``notification_read_all``) and applied to
the notifications there are, and a notification written later starts read if a kept mark covers
it, so a rebuilt read model, whatever order it meets the partitions in, has the same read marks.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from projections.events import EventRecord
from projections.projector import Handler, Projector

# A notification's read time as the reads see it: its own column, or a kept mark that covers it. The
# column alone is not enough: a mark (the Inbox's partition) and the notification it covers (another
# aggregate's partition) can be applied by two concurrent transactions, neither seeing the other's
# row, so the writes may leave the column empty (seen under load after a rebuild). Reading through the
# marks makes the answer independent of the order and interleaving in which partitions are applied.
READ_AT = (
    "least(n.read_at,"
    " (SELECT m.read_at FROM notification_read_marks m WHERE m.user_id = n.user_id"
    " AND m.notification_id = n.notification_id),"
    " (SELECT min(a.read_at) FROM notification_read_all a WHERE a.user_id = n.user_id AND a.read_at >= n.created_at))"
)
_COLUMNS = (
    "n.notification_id, n.user_id, n.kind, n.message, n.data, n.aggregate_id::text, n.aggregate_version,"
    f" n.created_at, {READ_AT} AS read_at"
)
NOTIFYING = {
    "Execution.Completed",
    "Execution.Failed",
    "DataObject.Annotated",
    "DataObject.Deleted",
    "User.RoleChanged",
}


class NotificationsProjector(Projector):
    name = "notifications"

    def handlers(self) -> dict[str, Handler]:
        return {
            "DataObject.Ingested": self.on_owned,
            "Execution.Submitted": self.on_owned,
            "Inbox.Opened": self.on_owned,
            "Inbox.NotificationsRead": self.on_read,
            "Execution.Completed": self.on_execution_finished,
            "Execution.Failed": self.on_execution_finished,
            "DataObject.Annotated": self.on_object_changed,
            "DataObject.Deleted": self.on_object_changed,
            "User.RoleChanged": self.on_role_changed,
        }

    async def on_owned(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        owner = getattr(record.event, "owner", None) or getattr(record.event, "submitter", "")
        await cur.execute(
            "INSERT INTO notification_subjects (aggregate_id, owner) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (record.aggregate_id, owner),
        )

    async def on_execution_finished(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        owner = await _owner(cur, record.aggregate_id)
        if owner is None:
            return
        finished = record.type.partition(".")[2].lower()
        data: dict[str, Any] = {"execution_id": record.aggregate_id, "status": finished}
        if finished == "failed":
            data["error"] = record.event.error
        await _notify(cur, record, owner, f"execution_{finished}", f"Your execution {finished}", data)

    async def on_object_changed(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        owner = await _owner(cur, record.aggregate_id)
        actor = record.headers.get("actor", "")
        if owner is None or actor == owner:
            return  # your own changes need no telling
        change = record.type.partition(".")[2].lower()
        data = {"object_id": record.aggregate_id, "by": actor, "change": change}
        if change == "annotated":
            data["annotation_type"] = record.event.annotation_type
        await _notify(cur, record, owner, f"object_{change}", f"Someone else {change} your object", data)

    async def on_role_changed(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        actor = record.headers.get("actor", "")
        if actor == record.aggregate_id:
            return
        data = {"role": record.event.role, "by": actor}
        await _notify(cur, record, record.aggregate_id, "role_changed", f"Your role is now {record.event.role}", data)

    async def on_read(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        user_id = await _owner(cur, record.aggregate_id)
        if user_id is None:
            return
        ids, at = record.event.notification_ids, record.event.timestamp
        if ids is None:
            await cur.execute(
                "INSERT INTO notification_read_all (user_id, read_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (user_id, at),
            )
            await cur.execute(
                "UPDATE notifications SET read_at = %s WHERE user_id = %s AND read_at IS NULL AND created_at <= %s",
                (at, user_id, at),
            )
            return
        await cur.execute(
            "INSERT INTO notification_read_marks (user_id, notification_id, read_at)"
            " SELECT %s, unnest(%s::text[]), %s ON CONFLICT DO NOTHING",
            (user_id, ids, at),
        )
        await cur.execute(
            "UPDATE notifications SET read_at = %s"
            " WHERE user_id = %s AND read_at IS NULL AND notification_id = ANY(%s)",
            (at, user_id, ids),
        )


async def _owner(cur: AsyncCursor[Any], aggregate_id: str) -> str | None:
    await cur.execute("SELECT owner FROM notification_subjects WHERE aggregate_id = %s", (aggregate_id,))
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def _notify(
    cur: AsyncCursor[Any], record: EventRecord, user_id: str, kind: str, message: str, data: dict[str, Any]
) -> None:
    """One notification; read already if a kept mark of the user's inbox covers it (least() skips NULLs)."""
    notification_id, at = record.headers["event_id"], record.event.timestamp
    await cur.execute(
        "INSERT INTO notifications (notification_id, user_id, kind, message, data, aggregate_id, aggregate_version,"
        " created_at, read_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s, least("
        "(SELECT read_at FROM notification_read_marks WHERE user_id = %s AND notification_id = %s),"
        " (SELECT min(read_at) FROM notification_read_all WHERE user_id = %s AND read_at >= %s)))"
        " ON CONFLICT DO NOTHING",
        (
            notification_id,
            user_id,
            kind,
            message,
            Jsonb(data),
            record.aggregate_id,
            record.version,
            at,
            user_id,
            notification_id,
            user_id,
            at,
        ),
    )


async def notifications_caused_by(conn: AsyncConnection[Any], causes: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """The notifications the given (aggregate id, version) events produced."""
    if not causes:
        return []
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM notifications n JOIN unnest(%s::uuid[], %s::int[]) AS c(id, v)"
            " ON n.aggregate_id = c.id AND n.aggregate_version = c.v ORDER BY n.created_at",
            ([a for a, _ in causes], [v for _, v in causes]),
        )
        return await cur.fetchall()


async def list_notifications(
    conn: AsyncConnection[Any], user_id: str, unread_only: bool, limit: int, offset: int
) -> list[dict[str, Any]]:
    """A user's notifications, newest first."""
    where = "n.user_id = %s" + (f" AND {READ_AT} IS NULL" if unread_only else "")
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM notifications n WHERE {where} ORDER BY n.created_at DESC, n.notification_id"
            " LIMIT %s OFFSET %s",
            (user_id, limit, offset),
        )
        return await cur.fetchall()


async def count_unread(conn: AsyncConnection[Any], user_id: str, notification_ids: list[str] | None) -> int:
    """How many of the user's notifications (the given ones, or all) are unread."""
    given = notification_ids is not None
    where = f"n.user_id = %s AND {READ_AT} IS NULL" + (" AND n.notification_id = ANY(%s)" if given else "")
    params: tuple[Any, ...] = (user_id, notification_ids) if given else (user_id,)
    cur = await conn.execute(f"SELECT count(*) FROM notifications n WHERE {where}", params)
    row = await cur.fetchone()
    return int(row[0]) if row else 0
