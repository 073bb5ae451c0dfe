"""The inbox aggregate: what a user has seen of their notifications (the notifications themselves
are a read model of other aggregates' events; that they were read is a fact of its own, so a
rebuilt read model keeps it)."""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

_NAMESPACE = uuid5(NAMESPACE_URL, "pipeline-gateway:inbox")


def inbox_id(user_id: str) -> UUID:
    """Each user has one inbox, its id derived from theirs (so it needs no lookup)."""
    return uuid5(_NAMESPACE, user_id)


class Inbox(Aggregate):
    class Opened(Aggregate.Created):
        owner: str

    class NotificationsRead(Aggregate.Event):
        notification_ids: list[str] | None  # None: every notification caused before this event

    @event(Opened)
    def __init__(self, id: UUID, owner: str) -> None:  # eventsourcing takes the id from `id`
        self.owner = owner

    def mark_read(self, notification_ids: list[str] | None) -> None:
        self._read(notification_ids)

    @event(NotificationsRead)
    def _read(self, notification_ids: list[str] | None) -> None:
        pass
