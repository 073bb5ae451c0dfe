"""Conversation as Given (past events) / When (command) / Then (new events or refusal), through the registry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID, uuid4

import pytest

from commands.envelope import Actor, CommandEnvelope
from commands.registry import execute
from domain.conversation import MAX_UNANSWERED, Conversation
from domain.data_object import DataObject
from domain.errors import DomainError
from domain.inbox import inbox_id

ALICE, BOB, ADMIN, VIEWER = Actor("alice", "user"), Actor("bob", "user"), Actor("root", "admin"), Actor("v", "viewer")


def envelope(command: str, conversation_id: UUID, payload: dict, actor: Actor = ALICE) -> CommandEnvelope:
    return CommandEnvelope(
        command_id=str(uuid4()), type=command, aggregate_id=str(conversation_id), payload=payload, actor=actor
    )


def post(conversation_id: UUID, aggregate: Any, message_id: str, actor: Actor = ALICE) -> Conversation:
    payload = {"message_id": message_id, "content": "what does kafka keep?", "new": aggregate is None}
    return execute(envelope("PostMessage", conversation_id, payload, actor), aggregate)  # type: ignore[return-value]


def respond(conversation_id: UUID, aggregate: Any, message_id: str, actor: Actor = ALICE) -> Conversation:
    payload = {"message_id": message_id, "kind": "answer", "content": "An ordered log.", "sources": []}
    return execute(envelope("GiveResponse", conversation_id, payload, actor), aggregate)  # type: ignore[return-value]


def given_posted(conversation_id: UUID, message_id: str = "1") -> Conversation:
    conversation = post(conversation_id, None, message_id)
    conversation.collect_events()
    return conversation


def test_the_first_message_starts_the_conversation_owned_by_its_author() -> None:
    conversation_id = uuid4()
    events: Sequence[Any] = post(conversation_id, None, "1").collect_events()
    assert [type(e).__name__ for e in events] == ["Started", "MessagePosted"]
    assert events[0].owner == "alice" and events[1].content == "what does kafka keep?" and events[1].author == "alice"


def test_a_message_to_an_id_no_conversation_has_starts_none() -> None:
    """Only an id the API chose starts a conversation: a client's id must name one of theirs, or it
    could take any aggregate id first (another user's inbox, a username's future user id)."""
    for taken in (inbox_id("bob"), uuid4()):
        payload = {"message_id": "1", "content": "hi"}
        with pytest.raises(DomainError) as refused:
            execute(envelope("PostMessage", taken, payload), None)
        assert refused.value.code == "not_found"


def test_a_response_answers_a_posted_message_once() -> None:
    conversation_id = uuid4()
    conversation = given_posted(conversation_id)
    events: Sequence[Any] = respond(conversation_id, conversation, "1").collect_events()
    assert [(type(e).__name__, e.message_id, e.originator_version) for e in events] == [("ResponseGiven", "1", 3)]
    with pytest.raises(DomainError) as refused:
        respond(conversation_id, conversation, "1")
    assert refused.value.code == "conflict"
    with pytest.raises(DomainError):
        respond(conversation_id, conversation, "never-posted")


def test_another_users_conversation_does_not_exist_for_them_but_does_for_admins() -> None:
    conversation_id = uuid4()
    conversation = given_posted(conversation_id)
    for command in (post, respond):
        with pytest.raises(DomainError) as refused:
            command(conversation_id, conversation, "1" if command is respond else "2", BOB)
        assert refused.value.code == "not_found"
    assert [type(e).__name__ for e in respond(conversation_id, conversation, "1", ADMIN).collect_events()] == [
        "ResponseGiven"
    ]


def test_a_viewer_may_not_chat() -> None:
    with pytest.raises(DomainError) as refused:
        post(uuid4(), None, "1", VIEWER)
    assert refused.value.code == "forbidden"


def test_a_conversation_id_naming_another_kind_of_aggregate_is_not_found() -> None:
    other = DataObject(
        id=uuid4(), content_type="text/plain", content_hash="ab", size=1, location="x", metadata={}, owner="alice"
    )
    with pytest.raises(DomainError) as refused:
        post(uuid4(), other, "1")
    assert refused.value.code == "not_found"


def test_too_many_unanswered_messages_are_refused() -> None:
    conversation_id = uuid4()
    conversation = given_posted(conversation_id, "0")
    for index in range(1, MAX_UNANSWERED):
        conversation = post(conversation_id, conversation, str(index))
    with pytest.raises(DomainError) as refused:
        post(conversation_id, conversation, "99")
    assert refused.value.code == "conflict"


def test_content_with_nul_or_too_long_is_an_invalid_command() -> None:
    for content in ("a\x00b", "x" * 4001, ""):
        with pytest.raises(DomainError) as refused:
            execute(envelope("PostMessage", uuid4(), {"message_id": "1", "content": content, "new": True}), None)
        assert refused.value.code == "invalid"


def test_marking_notifications_read_opens_the_callers_own_inbox_only() -> None:
    mine = inbox_id("alice")
    events: Sequence[Any] = execute(envelope("MarkNotificationsRead", mine, {"ids": ["n-1"]}), None).collect_events()
    assert [type(e).__name__ for e in events] == ["Opened", "NotificationsRead"]
    assert events[0].owner == "alice" and events[1].notification_ids == ["n-1"]
    with pytest.raises(DomainError) as refused:
        execute(envelope("MarkNotificationsRead", inbox_id("bob"), {}), None)
    assert refused.value.code == "not_found"
    viewer_inbox = execute(envelope("MarkNotificationsRead", inbox_id("v"), {}, VIEWER), None)
    assert [e.notification_ids for e in viewer_inbox.collect_events()[1:]] == [None]  # type: ignore[attr-defined]
