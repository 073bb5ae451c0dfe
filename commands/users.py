"""User commands and their handlers. Who may do what is decided here, from the envelope's actor,
so every entry point (REST, CLI, GraphQL, WebSocket) is held to the same rules."""

from __future__ import annotations

import msgspec

from commands.envelope import Actor, CommandEnvelope
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


def _require_admin(envelope: CommandEnvelope) -> None:
    if envelope.actor.role != "admin":
        raise Forbidden("this command needs the admin role", {"role": envelope.actor.role})


def _existing(aggregate: User | None, envelope: CommandEnvelope) -> User:
    if not isinstance(aggregate, User):
        raise UserNotFound(f"user {envelope.aggregate_id} does not exist")
    return aggregate
