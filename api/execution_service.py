"""Execution use cases shared by REST, GraphQL and WebSocket: submit a graph, read a status."""

from __future__ import annotations

import uuid
from typing import Any

from api.auth import actor_of
from api.commands import derived_id, submit
from api.data_service import Connection, wait_for_token
from api.errors import ApiError
from api.inputs import ExecutionRequest, checked_json
from commands.envelope import Outcome
from domain.graph import parse_graph
from infra.bootstrap import ApiContainer
from projections.executions import get_execution


async def execute_graph(
    connection: Connection, container: ApiContainer, request: ExecutionRequest
) -> tuple[str, Outcome, float]:
    """Submit ExecuteGraph (422 lists every problem); returns (execution id, outcome, estimated seconds)."""
    execution_id = derived_id(connection, "execute") or str(uuid.uuid4())
    payload = {name: checked_json(getattr(request, name), name) for name in ("graph", "inputs", "options")}
    outcome = await submit(connection, container, "ExecuteGraph", execution_id, payload)
    return execution_id, outcome, parse_graph(request.graph).estimated_seconds()


async def read_execution(
    connection: Connection, container: ApiContainer, execution_id: str, token: str | None = None
) -> dict[str, Any]:
    """The execution row; 404 when absent or when it is another user's (admins see all)."""
    await wait_for_token(container, token)
    try:
        uuid.UUID(execution_id)
    except ValueError as exc:
        raise ApiError(404, "not_found", f"execution {execution_id} does not exist") from exc
    async with container.pool.connection() as conn:
        row = await get_execution(conn, execution_id)
    actor = actor_of(connection)
    if row is None or (row["submitter"] != actor.user_id and actor.role != "admin"):
        raise ApiError(404, "not_found", f"execution {execution_id} does not exist")
    return row
