"""Conversation commands and their handlers: a question posted, a response given (domain/conversation.py)."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec

from commands.envelope import CommandEnvelope
from commands.limits import NO_NUL
from domain.conversation import Conversation
from domain.errors import DomainError

MAX_MESSAGE_CHARS = 4000  # a chat message, as the edge takes it (api/inputs.ChatMessage)
MAX_RESPONSE_CHARS = 8000
MAX_SOURCES = 10
# A chat message is a write (the conversation's events), so it needs the spec's write permission
# (RBACService: viewer -> [READ] only); reading one's conversations is open to every role.
ROLES = ("admin", "user")

MessageText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MESSAGE_CHARS, pattern=NO_NUL)]
ResponseText = Annotated[str, msgspec.Meta(max_length=MAX_RESPONSE_CHARS, pattern=NO_NUL)]
MessageId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[0-9a-fA-F-]+$")]
ResponseKind = Annotated[str, msgspec.Meta(pattern=r"^(answer|search|status|ingest|help|error)$")]


class Source(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    object_id: MessageId
    snippet: ResponseText = ""
    score: float = 0.0


class PostMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    message_id: MessageId
    content: MessageText
    # True when the API chose the conversation's id (a chat without one): only then may the message
    # start a conversation. A client's id must name an existing conversation of theirs, or any id
    # (another user's inbox, a username's future user id) could be taken by a conversation first.
    new: bool = False


class GiveResponse(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    message_id: MessageId
    kind: ResponseKind
    content: ResponseText
    sources: Annotated[list[Source], msgspec.Meta(max_length=MAX_SOURCES)] = []
    data: dict[str, Any] = {}


class ConversationNotFound(DomainError):
    code = "not_found"


class Forbidden(DomainError):
    code = "forbidden"


def post_message(aggregate: Conversation | None, command: PostMessage, envelope: CommandEnvelope) -> Conversation:
    """The first message starts the conversation, owned by its author."""
    actor = envelope.actor
    if actor.role not in ROLES:
        raise Forbidden(f"the {actor.role} role may not chat", {"role": actor.role})
    if aggregate is None and command.new:
        conversation = Conversation(id=UUID(envelope.aggregate_id), owner=actor.user_id)
    else:
        conversation = _usable(aggregate, envelope)
    conversation.post(command.message_id, command.content, actor.user_id)
    return conversation


def give_response(aggregate: Conversation | None, command: GiveResponse, envelope: CommandEnvelope) -> Conversation:
    conversation = _usable(aggregate, envelope)
    sources = [msgspec.to_builtins(source) for source in command.sources]
    conversation.respond(command.message_id, command.kind, command.content, sources, command.data)
    return conversation


def _usable(aggregate: Conversation | None, envelope: CommandEnvelope) -> Conversation:
    """The conversation, if the actor may use it; to anyone else it does not exist (ids cannot be probed)."""
    if not isinstance(aggregate, Conversation) or not aggregate.may_be_used_by(
        envelope.actor.user_id, envelope.actor.role
    ):
        raise ConversationNotFound(
            f"conversation {envelope.aggregate_id} does not exist", {"conversation_id": envelope.aggregate_id}
        )
    return aggregate
