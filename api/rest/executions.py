"""REST: submit a graph for execution, follow it, list and cancel executions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from api.auth import actor_of
from api.commands import submit
from api.execution_service import execute_graph, read_execution
from api.inputs import ExecutionRequest, require_one_of
from api.rbac import Permission, requires
from api.rest.data import ConsistencyToken
from api.rest.paging import MAX_OFFSET
from infra.runtime.bootstrap import ApiContainer
from projections.executions import list_executions

STATUSES = ("submitted", "running", "completed", "failed", "cancelled")

# The documented parameter: one of the statuses (absent: all), checked by check_status, not by litestar.
STATUS_SCHEMA = {"type": "string", "one_of": None, "enum": list(STATUSES)}


def check_status(status: str | None) -> str | None:
    """The status filter as given; an unknown one is a 400 naming the statuses."""
    return require_one_of(status, list(STATUSES), "status", "execution status", "statuses")


class ExecutionSubmitted(msgspec.Struct):
    execution_id: str
    status: str
    estimated_time_seconds: float
    version: int
    position: str | None


class NodeState(msgspec.Struct):
    node_id: str
    type: str | None
    status: str
    started_at: str | None = None
    completed_at: str | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None


class ExecutionStatus(msgspec.Struct):
    execution_id: str
    status: str
    progress: float
    current_node: str | None
    errors: list[str]
    submitted_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    submitter: str
    estimated_time_seconds: float
    version: int
    nodes: list[NodeState]


class ExecutionPage(msgspec.Struct):
    items: list[ExecutionStatus]
    total: int
    limit: int
    offset: int


class ExecutionCancelled(msgspec.Struct):
    execution_id: str
    status: str
    version: int
    position: str | None


def to_status(row: dict[str, Any]) -> ExecutionStatus:
    nodes = [NodeState(node_id=node_id, **row["nodes"].get(node_id, {})) for node_id in row["node_order"]]
    return ExecutionStatus(
        execution_id=row["execution_id"],
        status=row["status"],
        progress=round(row["progress"], 6),
        current_node=row["current_node"],
        errors=list(row["errors"]),
        submitted_at=row["submitted_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        submitter=row["submitter"],
        estimated_time_seconds=row["estimated_time_seconds"],
        version=row["version"],
        nodes=nodes,
    )


class ExecutionsController(Controller):
    path = "/api/v1"
    tags = ["execution"]  # the spec's tag name

    @post(
        "/execute",
        operation_id="executeGraph",
        status_code=202,
        summary="Submit a processing graph",
        opt=requires(Permission.EXECUTE),
    )
    async def execute(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[ExecutionRequest],
        container: NamedDependency[ApiContainer],
    ) -> Response[ExecutionSubmitted]:
        """Validate and record the graph (400 lists its problems); the executor runs it."""
        execution_id, outcome, estimate = await execute_graph(request, container, data)
        body = ExecutionSubmitted(
            execution_id=execution_id,
            status="submitted",
            estimated_time_seconds=estimate,
            version=outcome.version,
            position=outcome.position,
        )
        headers = {"X-Consistency-Token": outcome.position} if outcome.position else {}
        return Response(body, status_code=202, headers=headers)

    @get(
        "/executions/{execution_id:uuid}",
        operation_id="getExecution",
        summary="An execution's status",
        opt=requires(Permission.READ),
    )
    async def get_one(
        self,
        request: Request[Any, Any, Any],
        execution_id: FromPath[uuid.UUID],
        container: NamedDependency[ApiContainer],
        consistency_token: ConsistencyToken = None,
    ) -> ExecutionStatus:
        """Status, progress, current node, errors and node states; 404 for other users' executions."""
        token = consistency_token or request.headers.get("x-consistency-token")
        return to_status(await read_execution(request, container, str(execution_id), token))

    @get(
        "/executions",
        operation_id="listExecutions",
        summary="The caller's executions, newest first",
        opt=requires(Permission.READ),
    )
    async def list_all(
        self,
        request: Request[Any, Any, Any],
        container: NamedDependency[ApiContainer],
        status: Annotated[str | None, QueryParameter(required=False, schema_extra=STATUS_SCHEMA)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> ExecutionPage:
        """Paginated; admins see everyone's executions."""
        actor = actor_of(request)
        wanted = check_status(status)
        async with container.pool.connection() as conn:
            rows, total = await list_executions(
                conn, None if actor.role == "admin" else actor.user_id, wanted, limit, offset
            )
        return ExecutionPage([to_status(r) for r in rows], total, limit, offset)

    @post(
        "/executions/{execution_id:uuid}/cancel",
        operation_id="cancelExecution",
        status_code=200,
        summary="Cancel an execution (it stops between nodes)",
        opt=requires(Permission.EXECUTE),
    )
    async def cancel(
        self,
        request: Request[Any, Any, Any],
        execution_id: FromPath[uuid.UUID],
        container: NamedDependency[ApiContainer],
    ) -> Response[ExecutionCancelled]:
        """Only the submitter or an admin may cancel; a finished execution answers 409."""
        outcome = await submit(request, container, "CancelExecution", str(execution_id), {})
        body = ExecutionCancelled(str(execution_id), "cancelled", outcome.version, outcome.position)
        headers = {"X-Consistency-Token": outcome.position} if outcome.position else {}
        return Response(body, headers=headers)
