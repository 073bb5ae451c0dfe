"""The user aggregate: registration, role, password, disabling.

Credentials never enter the event log. The API hashes a password with argon2id and stores the
hash in the credential store (``infra/adapters/credentials.py``, outside the read-model schemas so a
rebuild keeps it) under a fresh random ``credential_id``; the events carry only that id. The
current credential of a user is therefore an event-sourced fact (who changed it, when), while the
hash stays out of events, the audit log, snapshots and responses. An orphan credential row (its
command was refused) is harmless: nothing refers to it.

A user's aggregate id is derived from the lower-cased username (``user_id_for``), so two
registrations of one name address the same aggregate; the command processor is the single
writer of each aggregate, so the second one finds it existing and is refused with a conflict.
"""

from __future__ import annotations

import re
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError

ROLES = ("admin", "user", "viewer")
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$")
_USERS_NS = UUID("0f2c3a8e-7d41-4b6a-9c55-3e1b2d7f9a10")


def user_id_for(username: str) -> UUID:
    """The aggregate id of the user with this name (case-insensitive)."""
    return uuid5(_USERS_NS, username.lower())


class User(Aggregate):
    class Registered(Aggregate.Created):
        username: str
        role: str
        credential_id: str

    class RoleChanged(Aggregate.Event):
        role: str

    class PasswordChanged(Aggregate.Event):
        credential_id: str

    class Disabled(Aggregate.Event):
        pass

    class Enabled(Aggregate.Event):
        pass

    @event(Registered)
    def __init__(self, id: UUID, username: str, role: str, credential_id: str) -> None:
        self.username = username
        self.role = role
        self.credential_id = credential_id
        self.disabled = False

    @classmethod
    def register(cls, username: str, role: str, credential_id: str) -> User:
        if not USERNAME.match(username):
            raise InvalidUser("username must be 3-64 letters, digits, '.', '_' or '-'", {"username": username})
        _check_role(role)
        return cls(id=user_id_for(username), username=username, role=role, credential_id=credential_id)

    def change_role(self, role: str) -> None:
        _check_role(role)
        if role != self.role:
            self._role_changed(role)

    @event(RoleChanged)
    def _role_changed(self, role: str) -> None:
        self.role = role

    def change_password(self, credential_id: str) -> None:
        self._password_changed(credential_id)

    @event(PasswordChanged)
    def _password_changed(self, credential_id: str) -> None:
        self.credential_id = credential_id

    def disable(self) -> None:
        if not self.disabled:
            self._disabled()

    @event(Disabled)
    def _disabled(self) -> None:
        self.disabled = True

    def enable(self) -> None:
        if self.disabled:
            self._enabled()

    @event(Enabled)
    def _enabled(self) -> None:
        self.disabled = False


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidUser(f"role must be one of {', '.join(ROLES)}", {"role": role})


class InvalidUser(DomainError):
    code = "invalid"
