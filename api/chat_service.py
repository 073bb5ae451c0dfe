"""Chat as every entry point runs it (WebSocket ``chat_message``, GraphQL ``chat``): post, answer, record.

Why here, API-side, and not in the command processor or a worker: the answer needs the caller's
read models (search, execution status) and, for ``/ingest``, a command of its own, and handlers
must stay pure (load one aggregate, call one method, no I/O). So this service orchestrates like
``execution_service``: submit PostMessage (the conversation's rules: owner or admin), compute the
response from the caller's own data under the caller's rights (visibility as search; ``/ingest`` as
a normal IngestData command), then submit GiveResponse, so question and answer are both events.
What the answer says is domain logic (domain/chat.py); nothing here decides it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from api.auth import actor_of
from api.commands import derived_id, submit
from api.data_service import Connection, ingest, visible_row
from api.errors import ApiError
from api.execution_service import read_execution
from api.inputs import ChatMessage, DataIngestionRequest, object_id
from api.middleware import random_uuid
from api.rest.executions import to_status
from api.rest.search import run_search
from commands.conversation import MAX_RESPONSE_CHARS, Source
from domain import chat
from infra.runtime.bootstrap import ApiContainer
from projections.conversations import conversation_messages, get_conversation
from projections.search import SearchRequest, search

RETRIEVED = 5  # objects an answer draws its sentences from (and lists as sources)


class ChatReply(msgspec.Struct):
    conversation_id: str
    message_id: str
    kind: str  # answer, search, status, ingest, help or error
    content: str
    sources: list[Source]
    data: dict[str, Any]
    version: int
    position: str | None  # wait for it (consistency token) to read the history with this reply in it


async def chat_message(connection: Connection, container: ApiContainer, message: ChatMessage) -> ChatReply:
    """Post the message to its conversation (a new one without an id), answer it, record the answer."""
    conversation_id = (
        object_id(message.conversation_id, "conversation_id")
        if message.conversation_id is not None
        else derived_id(connection, "conversation") or random_uuid()
    )
    message_id = derived_id(connection, f"chat:{conversation_id}") or random_uuid()
    posted = {"message_id": message_id, "content": message.content, "new": message.conversation_id is None}
    await submit(connection, container, "PostMessage", conversation_id, posted)
    kind, content, sources, data = await _respond(connection, container, chat.parse(message.content))
    content = content[:MAX_RESPONSE_CHARS]
    response = {
        "message_id": message_id,
        "kind": kind,
        "content": content,
        "sources": [msgspec.to_builtins(source) for source in sources],
        "data": data,
    }
    outcome = await submit(connection, container, "GiveResponse", conversation_id, response)
    return ChatReply(conversation_id, message_id, kind, content, sources, data, outcome.version, outcome.position)


Response = tuple[str, str, list[Source], dict[str, Any]]


async def _respond(connection: Connection, container: ApiContainer, request: chat.ChatRequest) -> Response:
    """(kind, content, sources, data) for one parsed message; the caller's refusals become kind error."""
    try:
        if request.kind == "search":
            return await _search(connection, container, request.argument)
        if request.kind == "status":
            return await _status(connection, container, request.argument)
        if request.kind == "ingest":
            return await _ingest(connection, container, request.argument)
        if request.kind == "question":
            return await _answer(connection, container, request.argument)
    except ApiError as exc:
        return "error", exc.message, [], {"code": exc.reason}
    unknown = request.argument if request.kind == "unknown" else None
    return "help", chat.help_text(unknown), [], {"commands": sorted(chat.COMMANDS)}


async def _search(connection: Connection, container: ApiContainer, query: str) -> Response:
    if not query:
        return "error", chat.COMMANDS["search"], [], {"code": "usage"}
    found = await run_search(container, actor_of(connection), query, "text", RETRIEVED, 0, {})
    sources = [Source(hit.object_id, hit.snippet, hit.score) for hit in found.results]
    return "search", f"{found.total} of your objects match {query!r}.", sources, {"total": found.total}


async def _status(connection: Connection, container: ApiContainer, execution_id: str) -> Response:
    if not execution_id:
        return "error", chat.COMMANDS["status"], [], {"code": "usage"}
    status = msgspec.to_builtins(to_status(await read_execution(connection, container, execution_id)))
    status.pop("nodes", None)  # each node's results: unbounded, and GET /api/v1/executions/{id} has them
    text = f"Execution {execution_id} is {status['status']} ({status['progress']:.0%} done)."
    return "status", text, [], {"execution": status}


async def _ingest(connection: Connection, container: ApiContainer, text: str) -> Response:
    if not text:
        return "error", chat.COMMANDS["ingest"], [], {"code": "usage"}
    written = await ingest(connection, container, DataIngestionRequest(content=text, content_type="text/plain"))
    data = {"object_id": written.aggregate_id, "position": written.outcome.position}
    return "ingest", f"Stored as object {written.aggregate_id}.", [], data


async def _answer(connection: Connection, container: ApiContainer, question: str) -> Response:
    query = chat.search_query(question)
    if query is None:
        return "help", chat.help_text(), [], {"commands": sorted(chat.COMMANDS)}
    actor = actor_of(connection)
    request = SearchRequest(
        query=query,
        limit=RETRIEVED,
        owner_scope=None if actor.role == "admin" else actor.user_id,  # the visibility rule of search
        language=container.settings.search.language,
        with_text=True,
    )
    async with container.pool.connection() as conn:
        hits, _ = await search(conn, request)
    text, quoted = chat.answer(question, [chat.Document(hit["object_id"], hit["search_text"]) for hit in hits])
    cited = list(dict.fromkeys(sentence.object_id for sentence in quoted))
    order = {cited_id: index for index, cited_id in enumerate(cited)}
    hits.sort(key=lambda hit: order.get(hit["object_id"], len(order)))  # stable: the rest in search order
    sources = [Source(hit["object_id"], hit["snippet"], round(hit["score"], 6)) for hit in hits]
    return "answer", text, sources, {"sentences": [dataclasses.asdict(sentence) for sentence in quoted]}


async def read_conversation(
    connection: Connection,
    container: ApiContainer,
    conversation_id: str,
    limit: int,
    offset: int,
    token: str | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The conversation's row and one page of its history, oldest first.

    404 when absent or not the caller's (admins see all), like data objects: ids cannot be probed.
    """
    row = await visible_row(connection, container, conversation_id, token, "conversation", get_conversation)
    async with container.pool.connection() as conn:
        return row, await conversation_messages(conn, row["conversation_id"], limit, offset)
