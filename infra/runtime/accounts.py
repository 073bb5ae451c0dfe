"""Operator-side user management: the first-start admin and the `pipeline user ...` commands.

These go through the same command path as the API (envelope -> commands topic -> processor),
with the system actor; the rules live in ``commands/users.py``.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from commands.envelope import CommandEnvelope, Outcome, Position
from commands.users import SYSTEM
from domain.admin_roster import ROSTER_ID
from domain.user import user_id_for
from infra.adapters.credentials import MAX_PASSWORD, MIN_PASSWORD
from infra.runtime.bootstrap import ApiContainer
from projections.users import admin_exists, enabled_admins, get_user

log = logging.getLogger("pipeline.accounts")


def check_password(password: str) -> None:
    """ValueError unless the password has a usable length."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValueError(f"a password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters")


async def system_command(container: ApiContainer, command_type: str, user_id: str, payload: dict[str, Any]) -> Outcome:
    """Submit one user command as the system actor and wait until the read model shows it."""
    envelope = CommandEnvelope(
        command_id=str(uuid.uuid4()),
        type=command_type,
        aggregate_id=user_id,
        payload=payload,
        actor=SYSTEM,
        submitted_at=time.time(),
    )
    outcome = await container.bus.submit(envelope)
    await wait_readable(container, outcome)
    return outcome


async def wait_readable(container: ApiContainer, outcome: Outcome) -> None:
    """Return once the read models show an accepted outcome's events (or the consistency timeout passed)."""
    if outcome.accepted and outcome.position:
        position = Position.parse(outcome.position)
        await container.changes.wait_for(
            position.partition, position.offset, container.settings.consistency.wait_timeout_seconds
        )


async def register(container: ApiContainer, username: str, password: str, role: str) -> Outcome:
    """Register a user as the system (hash stored first, then the event naming its credential id)."""
    check_password(password)
    user_id = str(user_id_for(username))
    credential_id = await container.credentials.create(user_id, password)
    payload = {"username": username, "role": role, "credential_id": credential_id}
    outcome = await system_command(container, "RegisterUser", user_id, payload)
    if outcome.accepted:
        await seat_if_admin(container, system_command, user_id)
    return outcome


# Submits one command (type, aggregate id, payload) for some actor: the API's caller or the system. It may
# raise on a refusal (the API's ``submit``) or return the refused outcome.
Send = Callable[[ApiContainer, str, str, dict[str, Any]], Awaitable[Outcome]]


async def change_user(
    container: ApiContainer, send: Send, user_id: str, role: str | None = None, disabled: bool | None = None
) -> Outcome | None:
    """Change a user's role and/or disable or enable them, keeping the admin roster (domain/admin_roster.py)
    a subset of the enabled admins: the user is unseated first when they may stop being an admin (refused
    for the last one), and seated after when they are one. The last command's outcome (a refused one
    ends the change), or None when nothing was asked."""
    if (role is not None and role != "admin") or disabled is True:
        unseated = await _roster_command(container, send, "UnseatAdmin", user_id)
        if not unseated.accepted:
            return unseated
    last: Outcome | None = None
    for command, payload in _user_commands(role, disabled):
        last = await send(container, command, user_id, payload)
        if not last.accepted:
            return last
    if last is not None:
        await wait_readable(container, last)
    if role == "admin" or disabled is False:
        await seat_if_admin(container, send, user_id)
    return last


def _user_commands(role: str | None, disabled: bool | None) -> list[tuple[str, dict[str, Any]]]:
    commands: list[tuple[str, dict[str, Any]]] = [] if role is None else [("ChangeRole", {"role": role})]
    if disabled is not None:
        commands.append(("DisableUser" if disabled else "EnableUser", {}))
    return commands


async def seat_if_admin(container: ApiContainer, send: Send, user_id: str) -> None:
    """Seat the user on the admin roster if the read model shows them an enabled admin (call it once the
    change that made them one is readable: a stale row leaves them off, which is the safe side)."""
    async with container.pool.connection() as conn:
        row = await get_user(conn, user_id)
    if row is not None and row["role"] == "admin" and not row["disabled"]:
        await _roster_command(container, send, "SeatAdmin", user_id)


async def _roster_command(container: ApiContainer, send: Send, command: str, user_id: str) -> Outcome:
    async with container.pool.connection() as conn:
        admins = await enabled_admins(conn)  # opens the roster if there is none yet
    return await send(container, command, str(ROSTER_ID), {"user_id": user_id, "admins": admins})


async def ensure_admin(container: ApiContainer) -> None:
    """First start: if no enabled admin exists, create one (a generated password is printed once)."""
    async with container.pool.connection() as conn:
        if await admin_exists(conn):
            return
    admin = container.settings.admin
    password = admin.password or secrets.token_urlsafe(18)
    outcome = await register(container, admin.username, password, "admin")
    if not outcome.accepted:
        # Another API process got there first, or the name is taken by a non-admin: say so, change nothing.
        reason = outcome.rejection.message if outcome.rejection else "refused"
        log.warning("first-start admin %r not created: %s", admin.username, reason)
        return
    if admin.password:
        log.info("created the first admin %r from the settings", admin.username)
    else:
        # Printed once, to the console only: it is not kept anywhere readable.
        print(f"\n*** created admin {admin.username!r} with password: {password} (shown once) ***\n", flush=True)
