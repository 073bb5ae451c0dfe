"""User commands and their handlers. Who may do what is decided here, from the envelope's actor,
so every entry point (REST, CLI, GraphQL, WebSocket) is held to the same rules."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec

from commands.envelope import Actor, CommandEnvelope
from domain.admin_roster import ROSTER_ID, AdminRoster
from domain.errors import DomainError
from domain.user import User, user_id_for

# The actor of commands the system issues itself (first-start admin, the operator CLI).
SYSTEM = Actor(user_id="system", role="admin")


class RegisterUser(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    username: str
    role: str
    credential_id: str


class ChangeRole(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: str


class ChangePassword(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    credential_id: str


class DisableUser(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class EnableUser(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


UserId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]


class SeatAdmin(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    user_id: UserId
    # The enabled admins as the sender reads them: they open the roster if it does not exist yet (a
    # system from before it); an existing roster ignores them.
    admins: Annotated[list[UserId], msgspec.Meta(max_length=1000)]


class UnseatAdmin(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    user_id: UserId
    admins: Annotated[list[UserId], msgspec.Meta(max_length=1000)]


class Forbidden(DomainError):
    code = "forbidden"


class UserExists(DomainError):
    code = "conflict"


class UserNotFound(DomainError):
    code = "not_found"


def register_user(aggregate: User | None, command: RegisterUser, envelope: CommandEnvelope) -> User:
    _require_admin(envelope)
    if aggregate is not None:
        raise UserExists(f"username {command.username!r} is taken", {"username": command.username})
    if str(user_id_for(command.username)) != envelope.aggregate_id:
        raise Forbidden("a user's id is derived from the username")
    return User.register(command.username, command.role, command.credential_id)


def change_role(aggregate: User | None, command: ChangeRole, envelope: CommandEnvelope) -> User:
    _require_admin(envelope)
    user = _existing(aggregate, envelope)
    if envelope.actor.user_id == envelope.aggregate_id and command.role != "admin":
        raise Forbidden("an admin cannot demote themselves (another admin must)")
    user.change_role(command.role)
    return user


def change_password(aggregate: User | None, command: ChangePassword, envelope: CommandEnvelope) -> User:
    if envelope.actor.role != "admin" and envelope.actor.user_id != envelope.aggregate_id:
        raise Forbidden("only the user or an admin may change a password")
    user = _existing(aggregate, envelope)
    user.change_password(command.credential_id)
    return user


def disable_user(aggregate: User | None, command: DisableUser, envelope: CommandEnvelope) -> User:
    _require_admin(envelope)
    if envelope.actor.user_id == envelope.aggregate_id:
        raise Forbidden("an admin cannot disable themselves")
    user = _existing(aggregate, envelope)
    user.disable()
    return user


def enable_user(aggregate: User | None, command: EnableUser, envelope: CommandEnvelope) -> User:
    _require_admin(envelope)
    user = _existing(aggregate, envelope)
    user.enable()
    return user


def seat_admin(aggregate: AdminRoster | None, command: SeatAdmin, envelope: CommandEnvelope) -> AdminRoster:
    """Put a user who has become an enabled admin on the roster (domain/admin_roster.py)."""
    roster = _roster(aggregate, command.admins, envelope)
    roster.seat(command.user_id)
    return roster


def unseat_admin(aggregate: AdminRoster | None, command: UnseatAdmin, envelope: CommandEnvelope) -> AdminRoster:
    """Take a user off the roster before they are demoted or disabled: refused for the last admin."""
    roster = _roster(aggregate, command.admins, envelope)
    if envelope.actor.user_id == command.user_id:
        raise Forbidden("an admin cannot demote or disable themselves (another admin must)")
    roster.unseat(command.user_id)
    return roster


def _roster(aggregate: AdminRoster | None, admins: list[str], envelope: CommandEnvelope) -> AdminRoster:
    _require_admin(envelope)
    if envelope.aggregate_id != str(ROSTER_ID) or (aggregate is not None and not isinstance(aggregate, AdminRoster)):
        raise UserNotFound(f"admin roster {envelope.aggregate_id} does not exist")
    return aggregate if aggregate is not None else AdminRoster(id=UUID(envelope.aggregate_id), admins=admins)


def _require_admin(envelope: CommandEnvelope) -> None:
    if envelope.actor.role != "admin":
        raise Forbidden("this command needs the admin role", {"role": envelope.actor.role})


def _existing(aggregate: User | None, envelope: CommandEnvelope) -> User:
    if not isinstance(aggregate, User):
        raise UserNotFound(f"user {envelope.aggregate_id} does not exist")
    return aggregate
