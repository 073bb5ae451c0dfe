"""The conversation aggregate: one user's chat, each question posted and each response given.

The aggregate keeps only what its rules need (the owner and which messages still await a
response); the history itself is the events, folded into the conversations read model.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError

# A response answers one posted message; more than this many open questions means a client posts
# without ever waiting for answers (the aggregate's state stays small: it is snapshotted).
MAX_UNANSWERED = 32


class Conversation(Aggregate):
    class Started(Aggregate.Created):
        owner: str

    class MessagePosted(Aggregate.Event):
        message_id: str
        content: str
        author: str

    class ResponseGiven(Aggregate.Event):
        message_id: str  # the posted message this answers
        kind: str  # answer, search, status, ingest, help or error
        content: str
        sources: list[dict[str, Any]]  # [{object_id, snippet, score}]
        data: dict[str, Any]  # what the kind adds, e.g. {"object_id": ...} for an ingest

    @event(Started)
    def __init__(self, id: UUID, owner: str) -> None:  # eventsourcing takes the id from `id`
        self.owner = owner
        self.unanswered: list[str] = []

    def may_be_used_by(self, user_id: str, role: str) -> bool:
        """The owner and admins read and post; to anyone else the conversation does not exist."""
        return role == "admin" or user_id == self.owner

    def post(self, message_id: str, content: str, author: str) -> None:
        if message_id in self.unanswered:
            raise MessageExists(f"message {message_id} was already posted", {"message_id": message_id})
        if len(self.unanswered) >= MAX_UNANSWERED:
            raise TooManyUnanswered(
                f"at most {MAX_UNANSWERED} messages may await a response", {"limit": MAX_UNANSWERED}
            )
        self._posted(message_id, content, author)

    @event(MessagePosted)
    def _posted(self, message_id: str, content: str, author: str) -> None:
        self.unanswered.append(message_id)

    def respond(
        self, message_id: str, kind: str, content: str, sources: list[dict[str, Any]], data: dict[str, Any]
    ) -> None:
        if message_id not in self.unanswered:
            raise NothingToAnswer(
                f"message {message_id} was not posted here or already has its response", {"message_id": message_id}
            )
        self._responded(message_id, kind, content, sources, data)

    @event(ResponseGiven)
    def _responded(
        self, message_id: str, kind: str, content: str, sources: list[dict[str, Any]], data: dict[str, Any]
    ) -> None:
        self.unanswered.remove(message_id)


class MessageExists(DomainError):
    code = "conflict"


class TooManyUnanswered(DomainError):
    code = "conflict"


class NothingToAnswer(DomainError):
    code = "conflict"
