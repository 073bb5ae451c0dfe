"""The notifications read model: what each user should hear about, live and when they come back.

A user is told when their execution completes or fails, when someone else annotates or deletes one
of their objects, and when someone changes their role. The projector keeps who owns each object,
execution and inbox (``notification_subjects``: the object's row is gone once deleted, so the owner
is kept here), and writes one notification per causing event, keyed by the event id (exactly once,
like every projection). ``read_at`` comes from the user's Inbox (domain/inbox.py): each
NotificationsRead is kept (``notification_read_marks``, ``notification_read_all``) and the reads
derive each notification's read time from them (``READ_AT``), so a rebuilt read model, whatever
order it meets the partitions in, has the same read marks.
"""

from __future__ import annotations

from typing import Any

import orjson
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import dict_row

from projections.events import EventRecord
from projections.projector import BatchHandler, Handler, Projector, columns, copy_rows

# A notification's read time as the reads see it: a kept mark that covers it (or the column, which
# only databases from before the Inbox marks have filled). Written into the rows instead, a mark (the
# Inbox's partition) and the notification it covers (another aggregate's partition) could be applied
# by two concurrent transactions, neither seeing the other's row (seen under load after a rebuild).
# Reading through the marks makes the answer independent of the order in which partitions apply.
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
    tables = ("notification_subjects", "notifications", "notification_read_marks", "notification_read_all")

    def handlers(self) -> dict[str, Handler]:
        return {
            "Inbox.NotificationsRead": self.on_read,
            "Execution.Completed": self.on_execution_finished,
            "Execution.Failed": self.on_execution_finished,
            "User.RoleChanged": self.on_role_changed,
        }

    def batch_handlers(self) -> dict[str, BatchHandler]:
        return {
            "DataObject.Ingested": self.on_owned,
            "Execution.Submitted": self.on_owned,
            "Inbox.Opened": self.on_owned,
            "DataObject.Annotated": self.on_object_changed,
            "DataObject.Deleted": self.on_object_changed,
        }

    async def on_owned(self, cur: AsyncCursor[Any], records: list[EventRecord]) -> None:
        owners = (
            (r.aggregate_id, getattr(r.event, "owner", None) or getattr(r.event, "submitter", "")) for r in records
        )
        if self.bulk:
            # A rebuild's fill: each aggregate is created once (its version 1, applied once), so nothing is
            # there to conflict with; were something there, the event would be dead-lettered, not skipped.
            await copy_rows(cur, "notification_subjects", _SUBJECTS, owners)
            return
        await cur.execute(
            "INSERT INTO notification_subjects (aggregate_id, owner) SELECT * FROM unnest(%b::uuid[], %b::text[])"
            " ON CONFLICT DO NOTHING",
            columns(owners, 2),
        )

    async def on_execution_finished(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        owner = (await _owners(cur, [record.aggregate_id])).get(record.aggregate_id)
        if owner is None:
            return
        finished = record.type.partition(".")[2].lower()
        data: dict[str, Any] = {"execution_id": record.aggregate_id, "status": finished}
        if finished == "failed":
            data["error"] = record.event.error
        await _notify(cur, [(record, owner, f"execution_{finished}", f"Your execution {finished}", data)])

    async def on_object_changed(self, cur: AsyncCursor[Any], records: list[EventRecord]) -> None:
        owners = await _owners(cur, list({r.aggregate_id for r in records}))  # each once: an object has many events
        notes: list[_Note] = []
        for record in records:
            owner = owners.get(record.aggregate_id)
            actor = record.headers.get("actor", "")
            if owner is None or actor == owner:
                continue  # your own changes need no telling
            change = record.type.partition(".")[2].lower()
            data = {"object_id": record.aggregate_id, "by": actor, "change": change}
            if change == "annotated":
                data["annotation_type"] = record.event.annotation_type
            notes.append((record, owner, f"object_{change}", f"Someone else {change} your object", data))
        await _notify(cur, notes)

    async def on_role_changed(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        actor = record.headers.get("actor", "")
        if actor == record.aggregate_id:
            return
        data = {"role": record.event.role, "by": actor}
        message = f"Your role is now {record.event.role}"
        await _notify(cur, [(record, record.aggregate_id, "role_changed", message, data)])

    async def on_read(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        # Only the mark is kept: reads derive each notification's read time from the marks (READ_AT), so
        # writing it into the rows too would be a second copy (and one a concurrent partition can miss).
        user_id = (await _owners(cur, [record.aggregate_id])).get(record.aggregate_id)
        if user_id is None:
            return
        ids, at = record.event.notification_ids, record.event.timestamp
        if ids is None:
            await cur.execute(
                "INSERT INTO notification_read_all (user_id, read_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (user_id, at),
            )
            return
        await cur.execute(
            "INSERT INTO notification_read_marks (user_id, notification_id, read_at)"
            " SELECT %s, unnest(%b::text[]), %s ON CONFLICT DO NOTHING",
            (user_id, ids, at),
        )


# The columns and types of on_owned's rows, for copy_rows.
_SUBJECTS = (("aggregate_id", "uuid"), ("owner", "text"))
# (causing event, user to tell, kind, message, data)
_Note = tuple[EventRecord, str, str, str, dict[str, Any]]


async def _owners(cur: AsyncCursor[Any], aggregate_ids: list[str]) -> dict[str, str]:
    # Its own cursor: in pipeline mode the shared one may still hold the result of an earlier executemany.
    async with cur.connection.cursor() as reader:
        await reader.execute(
            "SELECT aggregate_id::text, owner FROM notification_subjects WHERE aggregate_id = ANY(%b::uuid[])",
            (aggregate_ids,),
        )
        return {str(aggregate_id): str(owner) for aggregate_id, owner in await reader.fetchall()}


async def _notify(cur: AsyncCursor[Any], notes: list[_Note]) -> None:
    """The notifications, unread as written: the reads look up the inbox's kept marks (READ_AT)."""
    if not notes:
        return
    rows = (
        (
            record.headers["event_id"],
            user_id,
            kind,
            message,
            orjson.dumps(data).decode(),
            record.aggregate_id,
            record.version,
            record.event.timestamp,
        )
        for record, user_id, kind, message, data in notes
    )
    await cur.execute(
        "INSERT INTO notifications (notification_id, user_id, kind, message, data, aggregate_id, aggregate_version,"
        " created_at) SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::jsonb[], %b::uuid[],"
        " %b::int4[], %b::timestamptz[]) ON CONFLICT DO NOTHING",
        columns(rows, 8),
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
