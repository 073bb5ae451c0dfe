"""REST: a conversation's history (the read model of projections/conversations.py), oldest first."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from api.chat_service import read_conversation
from api.rbac import Permission, requires
from api.rest.data import ConsistencyToken
from api.rest.paging import MAX_OFFSET
from infra.runtime.bootstrap import ApiContainer


class ChatSource(msgspec.Struct):
    object_id: str
    snippet: str  # the search's highlighted snippet, matches in <b>...</b>
    score: float


class ConversationEntry(msgspec.Struct):
    seq: int  # the entry's version in the conversation: the history's order
    message_id: str  # a response carries the id of the message it answers
    role: str  # user (a posted message) or assistant (a response)
    kind: str  # message, or the response's kind: answer, search, status, ingest, help, error
    author: str
    content: str
    sources: list[ChatSource]
    data: dict[str, Any]
    created_at: datetime


class ConversationHistory(msgspec.Struct):
    conversation_id: str
    owner: str
    version: int
    total: int  # messages and responses in the whole conversation
    started_at: datetime
    updated_at: datetime
    messages: list[ConversationEntry]


def to_history(row: dict[str, Any], messages: list[dict[str, Any]]) -> ConversationHistory:
    return msgspec.convert({**row, "messages": messages}, ConversationHistory)


class ConversationsController(Controller):
    path = "/api/v1/conversations"
    tags = ["chat"]

    @get(
        "/{conversation_id:uuid}",
        operation_id="getConversation",
        summary="A conversation's history, oldest first (its owner or an admin)",
        opt=requires(Permission.READ),
    )
    async def history(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[uuid.UUID],
        container: NamedDependency[ApiContainer],
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
        consistency_token: ConsistencyToken = None,
    ) -> ConversationHistory:
        """Messages and responses in order with their sources and times; ``offset``/``limit`` page through."""
        token = consistency_token or request.headers.get("x-consistency-token")
        row, messages = await read_conversation(request, container, str(conversation_id), limit, offset, token)
        return to_history(row, messages)
