"""The conversations read model: each chat's messages and responses in order (domain/conversation.py).

``conversations`` holds one row per conversation (its owner, for the visibility check, and its
version); ``conversation_messages`` one row per MessagePosted or ResponseGiven, keyed by the
aggregate version, so applying an event twice adds nothing and the history sorts by it.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from projections.events import EventRecord
from projections.projector import Handler, Projector

_MESSAGE_COLUMNS = "seq, message_id, role, kind, author, content, sources, data, created_at"


class ConversationsProjector(Projector):
    name = "conversations"
    tables = ("conversations", "conversation_messages")

    def handlers(self) -> dict[str, Handler]:
        return {
            "Conversation.Started": self.on_started,
            "Conversation.MessagePosted": self.on_posted,
            "Conversation.ResponseGiven": self.on_responded,
        }

    async def on_started(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        at = record.event.timestamp
        await cur.execute(
            "INSERT INTO conversations (conversation_id, owner, version, started_at, updated_at)"
            " VALUES (%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
            (record.aggregate_id, record.event.owner, record.version, at, at),
        )

    async def on_posted(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        e = record.event
        await _add(cur, record, "user", "message", e.author, e.content, [], {})

    async def on_responded(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        e = record.event
        await _add(cur, record, "assistant", e.kind, "assistant", e.content, e.sources, e.data)


async def _add(
    cur: AsyncCursor[Any],
    record: EventRecord,
    role: str,
    kind: str,
    author: str,
    content: str,
    sources: list[Any],
    data: dict[str, Any],
) -> None:
    at = record.event.timestamp
    await cur.execute(
        f"INSERT INTO conversation_messages (conversation_id, {_MESSAGE_COLUMNS})"
        " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
        (
            record.aggregate_id,
            record.version,
            record.event.message_id,
            role,
            kind,
            author,
            content,
            Jsonb(sources),
            Jsonb(data),
            at,
        ),
    )
    await cur.execute(
        "UPDATE conversations SET version = %s, message_count = message_count + 1, updated_at = %s"
        " WHERE conversation_id = %s AND version < %s",
        (record.version, at, record.aggregate_id, record.version),
    )


async def get_conversation(conn: AsyncConnection[Any], conversation_id: str) -> dict[str, Any] | None:
    """The conversation's row (owner, version, total: messages and responses, started_at, updated_at), or None."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT conversation_id::text AS conversation_id, owner, version, message_count AS total, started_at,"
            " updated_at"
            " FROM conversations WHERE conversation_id = %s",
            (conversation_id,),
        )
        return await cur.fetchone()


async def conversation_messages(
    conn: AsyncConnection[Any], conversation_id: str, limit: int, offset: int
) -> list[dict[str, Any]]:
    """One page of the history, oldest first."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM conversation_messages WHERE conversation_id = %s"
            " ORDER BY seq LIMIT %s OFFSET %s",
            (conversation_id, limit, offset),
        )
        return await cur.fetchall()
