"""Execution use cases shared by REST, GraphQL and WebSocket: submit a graph, read a status."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from redis.exceptions import RedisError

from api.auth import actor_of
from api.commands import derived_id, submit
from api.data_service import Connection, wait_for_token
from api.errors import ApiError
from api.inputs import ExecutionRequest, checked_json
from api.middleware import random_uuid
from commands.envelope import Outcome
from domain.graph import parse_graph
from infra.runtime.bootstrap import ApiContainer
from projections.executions import get_execution

log = logging.getLogger("pipeline.executions")
SUBMITTED_TTL_S = 60  # how long a submit's position is kept for subscribers that come right after it


async def execute_graph(
    connection: Connection, container: ApiContainer, request: ExecutionRequest
) -> tuple[str, Outcome, float]:
    """Submit ExecuteGraph (400 invalid_graph lists its problems); returns (execution id, outcome, estimate)."""
    execution_id = derived_id(connection, "execute") or random_uuid()
    payload = {name: checked_json(getattr(request, name), name) for name in ("graph", "inputs", "options")}
    outcome = await submit(connection, container, "ExecuteGraph", execution_id, payload)
    if outcome.position is not None and not outcome.duplicate:
        await _remember_submission(container, actor_of(connection).user_id, execution_id, outcome.position)
    return execution_id, outcome, parse_graph(request.graph).estimated_seconds()


def _submitted_key(container: ApiContainer, user_id: str, execution_id: str) -> str:
    return f"{container.settings.kafka.topic_prefix}:submitted:{user_id}:{execution_id}"


async def _remember_submission(container: ApiContainer, user_id: str, execution_id: str, position: str) -> None:
    """Keep the submit's position a while, so a subscribe moments later can wait for the read model.

    In Redis, not in this process: the subscribe may reach another API replica. Best effort: while
    Redis is down a subscribe needs the client's ``after`` token instead.
    """
    try:
        await container.redis.set(_submitted_key(container, user_id, execution_id), position, ex=SUBMITTED_TTL_S)
    except RedisError as exc:
        log.warning("cannot remember the position of execution %s: %s", execution_id, exc)


async def read_fresh_execution(
    connection: Connection, container: ApiContainer, execution_id: str, after: str | None = None
) -> dict[str, Any]:
    """read_execution for a subscribe that may come right after the submit.

    With ``after`` (the submit's position token) it waits for the read model to reach it. Without,
    an execution the caller submitted in the last SUBMITTED_TTL_S seconds is waited for the same
    way (its position was kept at submit): bounded by consistency.wait_timeout_seconds, after which
    the answer is 503 not_yet_consistent rather than a misleading 404.
    """
    try:
        return await read_execution(connection, container, execution_id, after)
    except ApiError as exc:
        if exc.status != 404 or after:
            raise
        missing = exc
    try:
        raw = await container.redis.get(_submitted_key(container, actor_of(connection).user_id, execution_id))
    except RedisError as exc:
        log.warning("cannot look up a recent submission of %s: %s", execution_id, exc)
        raw = None
    if raw is None:
        raise missing
    token = raw if isinstance(raw, str) else raw.decode()
    return await read_execution(connection, container, execution_id, token)


async def read_execution(
    connection: Connection, container: ApiContainer, execution_id: str, token: str | None = None
) -> dict[str, Any]:
    """The execution row; 404 when absent or when it is another user's (admins see all)."""
    await wait_for_token(container, token)
    try:
        uuid.UUID(execution_id)
    except ValueError as exc:
        raise ApiError(404, "not_found", f"execution {execution_id} does not exist") from exc
    row = await container.reads.read(get_execution, execution_id)
    actor = actor_of(connection)
    if row is None or (row["submitter"] != actor.user_id and actor.role != "admin"):
        raise ApiError(404, "not_found", f"execution {execution_id} does not exist")
    return row
