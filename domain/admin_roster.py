"""The admin roster: which users hold the admin role, so the last one is never demoted or disabled.

Each user is an aggregate of their own, and the command processor decides each aggregate alone: two
admins demoting each other at once were two commands on two aggregates, each seeing another admin
left, and both were accepted. The roster is the one aggregate that decides whether an admin may stop
being one (``unseat``): its commands are processed one at a time, so of two such demotions the second
sees the first and is refused when it would leave no admin.

Entry points keep the roster a subset of the users who really are enabled admins: an admin is
unseated before their role changes or they are disabled, and seated only after they became one
(api/admin_seats.py). A step that fails between the two leaves the roster short of an admin, which
can only refuse a demotion that was safe, never accept one that was not.
"""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError

ROSTER_ID = uuid5(NAMESPACE_URL, "pipeline-gateway:admin-roster")  # there is one roster


class AdminRoster(Aggregate):
    class Opened(Aggregate.Created):
        admins: list[str]

    class Seated(Aggregate.Event):
        user_id: str

    class Unseated(Aggregate.Event):
        user_id: str

    @event(Opened)
    def __init__(self, id: UUID, admins: list[str]) -> None:  # eventsourcing takes the id from `id`
        self.admins = list(admins)

    def seat(self, user_id: str) -> None:
        if user_id not in self.admins:
            self._seated(user_id)

    @event(Seated)
    def _seated(self, user_id: str) -> None:
        self.admins.append(user_id)

    def unseat(self, user_id: str) -> None:
        """Take ``user_id`` off the roster; LastAdmin when no other admin would remain."""
        if user_id not in self.admins:
            return
        if len(self.admins) == 1:
            raise LastAdmin("the last admin cannot be demoted or disabled (make another admin first)", {})
        self._unseated(user_id)

    @event(Unseated)
    def _unseated(self, user_id: str) -> None:
        self.admins.remove(user_id)


class LastAdmin(DomainError):
    code = "last_admin"
