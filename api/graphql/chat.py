"""GraphQL chat: the ``chat`` mutation and the ``conversation`` query, over api/chat_service.py as the
WebSocket ``chat_message`` and REST ``GET /api/v1/conversations/{id}`` use it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import strawberry
from graphql import GraphQLError
from strawberry.scalars import JSON

from api.chat_service import chat_message, read_conversation
from api.graphql.errors import answer, check_page, parsed, require
from api.graphql.objects import GqlInfo
from api.inputs import ChatMessage
from api.rbac import Permission
from api.rest.conversations import ConversationHistory, to_history


@strawberry.type
class ChatSource:
    object_id: str
    snippet: str
    score: float


@strawberry.type
class ChatResponse:
    conversation_id: str
    message_id: str
    kind: str = strawberry.field(description="answer, search, status, ingest, help or error")
    content: str
    sources: list[ChatSource]
    data: JSON
    version: int
    position: str | None


@strawberry.type
class ConversationEntry:
    seq: int
    message_id: str
    role: str = strawberry.field(description="user (a posted message) or assistant (a response)")
    kind: str
    author: str
    content: str
    sources: list[ChatSource]
    data: JSON
    created_at: datetime


@strawberry.type
class Conversation:
    conversation_id: str
    owner: str
    version: int
    total: int
    started_at: datetime
    updated_at: datetime
    messages: list[ConversationEntry]


def _sources(sources: list[Any]) -> list[ChatSource]:
    return [ChatSource(object_id=s.object_id, snippet=s.snippet, score=s.score) for s in sources]


def _conversation(history: ConversationHistory) -> Conversation:
    entries = [
        ConversationEntry(**{**msgspec.structs.asdict(entry), "sources": _sources(entry.sources)})
        for entry in history.messages
    ]
    return Conversation(**{**msgspec.structs.asdict(history), "messages": entries})


@strawberry.type
class ChatQuery:
    @strawberry.field(description="A conversation's history, oldest first (yours, or any for admins)")
    async def conversation(
        self, info: GqlInfo, id: str, limit: int = 50, offset: int = 0, consistency_token: str | None = None
    ) -> Conversation | None:
        require(info.context.connection, Permission.READ)
        check_page(limit, offset, 100, 100_000)
        ctx = info.context
        try:
            row, messages = await answer(
                read_conversation(ctx.connection, ctx.container, id, limit, offset, consistency_token)
            )
        except GraphQLError as exc:
            if (exc.extensions or {}).get("code") == 404:
                return None
            raise
        return _conversation(to_history(row, messages))


@strawberry.type
class ChatMutation:
    @strawberry.mutation(
        description="Ask a question about your data (or /search, /status, /ingest, /help); without"
        " conversationId a new conversation starts. The answer quotes your own objects, listed as sources."
    )
    async def chat(self, info: GqlInfo, content: str, conversation_id: str | None = None) -> ChatResponse:
        require(info.context.connection, Permission.WRITE)  # a chat message appends events
        message = parsed(ChatMessage, content=content, conversation_id=conversation_id)
        ctx = info.context
        reply = await answer(chat_message(ctx.connection, ctx.container, message))
        return ChatResponse(**{**msgspec.structs.asdict(reply), "sources": _sources(reply.sources)})
