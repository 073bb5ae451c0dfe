"""The inbox command: mark one's notifications read (domain/inbox.py)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec

from commands.envelope import CommandEnvelope
from domain.errors import DomainError
from domain.inbox import Inbox, inbox_id

NotificationId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


class MarkNotificationsRead(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ids: Annotated[list[NotificationId], msgspec.Meta(max_length=1000)] | None = None  # None: all of them


class InboxNotFound(DomainError):
    code = "not_found"


def mark_notifications_read(
    aggregate: Inbox | None, command: MarkNotificationsRead, envelope: CommandEnvelope
) -> Inbox:
    """Only a user's own inbox (its id derived from theirs); the first mark opens it. Every role may."""
    user_id = envelope.actor.user_id
    if envelope.aggregate_id != str(inbox_id(user_id)) or (aggregate is not None and not isinstance(aggregate, Inbox)):
        raise InboxNotFound(f"inbox {envelope.aggregate_id} does not exist", {"inbox_id": envelope.aggregate_id})
    inbox = aggregate if aggregate is not None else Inbox(id=UUID(envelope.aggregate_id), owner=user_id)
    inbox.mark_read(command.ids)
    return inbox
