"""Operator-side user management: the first-start admin and the `pipeline user ...` commands.

These go through the same command path as the API (envelope -> commands topic -> processor),
with the system actor; the rules live in ``commands/users.py``.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from typing import Any

from commands.envelope import CommandEnvelope, Outcome, Position
from commands.users import SYSTEM
from domain.user import user_id_for
from infra.adapters.credentials import MAX_PASSWORD, MIN_PASSWORD
from infra.runtime.bootstrap import ApiContainer
from projections.users import admin_exists

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
    if outcome.accepted and outcome.position:
        position = Position.parse(outcome.position)
        await container.changes.wait_for(
            position.partition, position.offset, container.settings.consistency.wait_timeout_seconds
        )
    return outcome


async def register(container: ApiContainer, username: str, password: str, role: str) -> Outcome:
    """Register a user as the system (hash stored first, then the event naming its credential id)."""
    check_password(password)
    user_id = str(user_id_for(username))
    credential_id = await container.credentials.create(user_id, password)
    payload = {"username": username, "role": role, "credential_id": credential_id}
    return await system_command(container, "RegisterUser", user_id, payload)


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
