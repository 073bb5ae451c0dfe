"""Entry-point side of every command: build the envelope, submit it, map the outcome.

REST, GraphQL and WebSocket all call ``submit``; no business rule lives here.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from litestar.connection import ASGIConnection

from api.auth import actor_of
from api.errors import ApiError, rejection_error, request_id_of
from api.middleware import SANE_ID, random_uuid
from commands.envelope import CommandEnvelope, Outcome, Position, encode
from infra.runtime.bootstrap import ApiContainer

# Namespace for ids derived from an Idempotency-Key: the same key from the same caller names the
# same command (and, for creations, the same new aggregate), so a retry lands on the same partition.
IDEMPOTENCY_NS = uuid.UUID("5b0e9a52-4c1f-4d3e-9b7a-2f6c8e1d0a77")
MAX_KEY_LENGTH = 200


def idempotency_key(request: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The request's Idempotency-Key. None on a WebSocket: its handshake's headers are the same for
    every message, so a key there would make each later command a duplicate of the first."""
    if request.scope["type"] == "websocket":
        return None
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        message = f"Idempotency-Key must be 1..{MAX_KEY_LENGTH} printable characters"
        raise ApiError(400, "invalid_header", message, {"field": "Idempotency-Key"})
    return key


def expected_version(request: ASGIConnection[Any, Any, Any, Any]) -> int | None:
    """``If-Match: <version>`` (quotes and a weak prefix allowed, as for an ETag)."""
    value = request.headers.get("if-match")
    if value is None:
        return None
    cleaned = value.strip().removeprefix("W/").strip('"')
    # ASCII digits only: str.isdigit() admits "²" (a latin-1 header byte), which int() refuses; and at
    # most 18 of them, so the version fits the command's 64-bit field.
    if not (cleaned.isascii() and cleaned.isdigit() and len(cleaned) <= 18):
        message = 'If-Match must be an aggregate version, e.g. If-Match: "3"'
        raise ApiError(400, "invalid_header", message, {"field": "If-Match"})
    return int(cleaned)


def derived_id(request: ASGIConnection[Any, Any, Any, Any], purpose: str) -> str | None:
    """A stable id from the caller's Idempotency-Key, or None without one."""
    key = idempotency_key(request)
    if key is None:
        return None
    return str(uuid.uuid5(IDEMPOTENCY_NS, f"{actor_of(request).user_id}\x00{purpose}\x00{key}"))


def correlation_id(request: ASGIConnection[Any, Any, Any, Any], request_id: str) -> str:
    """The caller's X-Correlation-ID when it is a sane id (like X-Request-ID), else the request id."""
    given = request.headers.get("x-correlation-id", "")
    return given if SANE_ID.match(given) else request_id


async def submit(
    request: ASGIConnection[Any, Any, Any, Any],
    container: ApiContainer,
    command_type: str,
    aggregate_id: str,
    payload: dict[str, Any],
    expected: int | None = None,
) -> Outcome:
    """Submit one command on behalf of the caller; a refusal raises the mapped ApiError.

    A command whose encoding exceeds ``kafka.max_command_bytes`` is refused (413) before it is sent:
    its events must fit the broker's message limit too.
    """
    if expected is not None and expected < 0:  # If-Match is digits only; GraphQL's expectedVersion an Int
        raise ApiError(400, "validation_error", "an expected version is 0 or more", {"field": "expected_version"})
    request_id = request_id_of(request) or uuid.uuid4().hex
    command_id = derived_id(request, f"command:{command_type}:{aggregate_id}") or random_uuid()
    envelope = CommandEnvelope(
        command_id=command_id,
        type=command_type,
        aggregate_id=aggregate_id,
        payload=payload,
        actor=actor_of(request),
        expected_version=expected,
        request_id=request_id,
        correlation_id=correlation_id(request, request_id),
        submitted_at=time.time(),
    )
    limit = container.settings.kafka.max_command_bytes
    encoded = encode(envelope)
    if len(encoded) > limit:
        raise ApiError(413, "too_large", f"the command is larger than {limit} bytes once encoded", {"limit": limit})
    outcome = await container.bus.submit(envelope, encoded)
    if not outcome.accepted:
        assert outcome.rejection is not None
        raise rejection_error(outcome.rejection)
    return outcome


async def wait_for_position(container: ApiContainer, outcome: Outcome) -> None:
    """Return once the read models show this outcome's events (or the consistency timeout passed)."""
    if not outcome.position:
        return
    position = Position.parse(outcome.position)
    await container.changes.wait_for(
        position.partition, position.offset, container.settings.consistency.wait_timeout_seconds
    )
