"""GraphQL for executions: executionStatus, availableNodes, executeGraph, executionUpdates."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any, cast

import strawberry
from graphql import GraphQLError
from strawberry.scalars import JSON
from strawberry.types import Info

from api.auth import actor_of
from api.errors import ApiError
from api.execution_service import execute_graph, read_execution, read_fresh_execution
from api.graphql.context import GraphQLContext
from api.graphql.errors import answer, parsed, require, to_graphql
from api.graphql.live import live_caller
from api.inputs import ExecutionRequest
from api.live_rights import mentions_user
from api.rbac import Permission
from api.rest.nodes import node_catalog

GqlInfo = Info[GraphQLContext, None]
FINISHED = {"completed", "failed", "cancelled"}


@strawberry.type
class ExecutionStatus:
    execution_id: str
    status: str
    progress: float
    current_node: str | None
    errors: list[str]
    started_at: datetime | None
    completed_at: datetime | None
    submitted_at: datetime
    estimated_time_seconds: float
    version: int
    nodes: JSON  # node id -> {status, summary, error, ...}


def to_status(row: dict[str, Any]) -> ExecutionStatus:
    return ExecutionStatus(
        execution_id=row["execution_id"],
        status=row["status"],
        progress=row["progress"],
        current_node=row["current_node"],
        errors=list(row["errors"]),
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        submitted_at=row["submitted_at"],
        estimated_time_seconds=row["estimated_time_seconds"],
        version=row["version"],
        nodes=row["nodes"],
    )


@strawberry.type
class ExecutionQuery:
    @strawberry.field(description="An execution's status (yours, or any for admins)")
    async def execution_status(self, info: GqlInfo, execution_id: str) -> ExecutionStatus | None:
        require(info.context.connection, Permission.READ)
        ctx = info.context
        try:
            return to_status(await answer(read_execution(ctx.connection, ctx.container, execution_id)))
        except GraphQLError as exc:
            if (exc.extensions or {}).get("code") == 404:
                return None
            raise

    @strawberry.field(description="Node types with ports and JSON-Schema parameters")
    def available_nodes(self, info: GqlInfo, category: str | None = None) -> list[JSON]:
        require(info.context.connection, Permission.READ)
        try:
            return [cast(JSON, node) for node in node_catalog(category)]
        except ApiError as exc:  # an unknown category: 400 naming the categories, as over REST
            raise to_graphql(exc) from exc


@strawberry.type
class ExecutionMutation:
    @strawberry.mutation(description="Validate and submit a processing graph")
    async def execute_graph(
        self, info: GqlInfo, graph: JSON, inputs: JSON | None = None, options: JSON | None = None
    ) -> ExecutionStatus:
        require(info.context.connection, Permission.EXECUTE)
        request = parsed(ExecutionRequest, graph=graph, inputs=inputs, options=options)
        ctx = info.context
        execution_id, outcome, _ = await answer(execute_graph(ctx.connection, ctx.container, request))
        return to_status(await answer(read_execution(ctx.connection, ctx.container, execution_id, outcome.position)))


@strawberry.type
class ExecutionSubscription:
    @strawberry.subscription(
        description="The execution's current status, then each change until it finishes; "
        "after: the submit's position token (an execution you just submitted is waited for anyway)"
    )
    async def execution_updates(
        self, info: GqlInfo, execution_id: str, after: str | None = None
    ) -> AsyncGenerator[ExecutionStatus, None]:
        require(info.context.connection, Permission.READ)
        ctx = info.context
        queue = ctx.container.changes.subscribe()  # before the first read: no change falls between
        try:
            row = await answer(read_fresh_execution(ctx.connection, ctx.container, execution_id, after))
            current = to_status(row)
            yield current
            user_id = actor_of(ctx.connection).user_id
            while current.status not in FINISHED:
                message = await queue.get()
                # After a reconnection of the feed the change may have gone unannounced: read again.
                changed = message.get("missed") or any(c["id"] == execution_id for c in message.get("changes", []))
                if changed or mentions_user(message, user_id):
                    # As the caller is now: a disabled caller ends here, a demoted admin gets 404.
                    await live_caller(ctx.connection, message)
                    row = await answer(read_execution(ctx.connection, ctx.container, execution_id))
                    if row["version"] != current.version:
                        current = to_status(row)
                        yield current
        finally:
            ctx.container.changes.unsubscribe(queue)
