"""The executions read model: status, progress, current node, errors and per-node states."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from projections.events import EventRecord
from projections.projector import Handler, Projector

# Progress counts finished nodes; node states change with jsonb_set so one event is one UPDATE.
_FINISHED = "(SELECT count(*) FROM jsonb_each(nodes) AS n(k, v) WHERE v->>'status' IN ('completed', 'failed'))"
_PROGRESS = f"{_FINISHED}::float / greatest((SELECT count(*) FROM jsonb_object_keys(nodes)), 1)"


class ExecutionsProjector(Projector):
    name = "executions"
    tables = ("executions",)

    def handlers(self) -> dict[str, Handler]:
        return {
            "Execution.Submitted": self.on_submitted,
            "Execution.NodeStarted": self.on_node_started,
            "Execution.NodeCompleted": self.on_node_completed,
            "Execution.NodeFailed": self.on_node_failed,
            "Execution.Completed": self.on_completed,
            "Execution.Failed": self.on_failed,
            "Execution.Cancelled": self.on_cancelled,
        }

    async def on_submitted(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        e = record.event
        types = {n["id"]: n["type"] for n in e.graph["nodes"]}
        nodes = {node_id: {"type": types.get(node_id), "status": "pending"} for node_id in e.node_order}
        await cur.execute(
            "INSERT INTO executions (execution_id, status, nodes, node_order, graph, options, estimated_time_seconds,"
            " submitter, version, submitted_at, updated_at) VALUES (%s,'submitted',%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (
                record.aggregate_id,
                Jsonb(nodes),
                Jsonb(e.node_order),
                Jsonb(e.graph),
                Jsonb(e.options),
                e.estimated_time_seconds,
                e.submitter,
                record.version,
                e.timestamp,
                e.timestamp,
            ),
        )

    async def _node(
        self,
        cur: AsyncCursor[Any],
        record: EventRecord,
        patch: dict[str, Any],
        extra: str = "",
        extra_params: tuple[Any, ...] = (),
    ) -> None:
        e = record.event
        await cur.execute(
            "UPDATE executions SET nodes = jsonb_set(nodes, ARRAY[%s], coalesce(nodes->%s, '{}') || %s),"
            f" version = %s, updated_at = %s{extra} WHERE execution_id = %s",
            (e.node_id, e.node_id, Jsonb(patch), record.version, e.timestamp, *extra_params, record.aggregate_id),
        )
        await cur.execute(
            f"UPDATE executions SET progress = {_PROGRESS} WHERE execution_id = %s", (record.aggregate_id,)
        )

    async def on_node_started(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        e = record.event
        await self._node(
            cur,
            record,
            {"status": "running", "started_at": _iso(e.timestamp)},
            ", status = 'running', current_node = %s, started_at = coalesce(started_at, %s)",
            (e.node_id, e.timestamp),
        )

    async def on_node_completed(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        e = record.event
        patch = {"status": "completed", "completed_at": _iso(e.timestamp), "summary": e.summary}
        # Branches run side by side: only clear the current node if it is still this one.
        extra = ", current_node = CASE WHEN current_node = %s THEN NULL ELSE current_node END"
        await self._node(cur, record, patch, extra, (e.node_id,))

    async def on_node_failed(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        e = record.event
        await self._node(cur, record, {"status": "failed", "completed_at": _iso(e.timestamp), "error": e.error})

    async def _finish(self, cur: AsyncCursor[Any], record: EventRecord, status: str, error: str | None) -> None:
        await cur.execute(
            "UPDATE executions SET status = %s, current_node = NULL, completed_at = %s, version = %s, updated_at = %s,"
            " errors = CASE WHEN %s::text IS NULL THEN errors ELSE errors || jsonb_build_array(%s::text) END"
            " WHERE execution_id = %s",
            (status, record.event.timestamp, record.version, record.event.timestamp, error, error, record.aggregate_id),
        )

    async def on_completed(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        await self._finish(cur, record, "completed", None)

    async def on_failed(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        await self._finish(cur, record, "failed", record.event.error)

    async def on_cancelled(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        await self._finish(cur, record, "cancelled", None)


def _iso(value: datetime) -> str:
    return value.isoformat()


_COLUMNS = (
    "execution_id::text AS execution_id, status, progress, current_node, errors, nodes, node_order, graph, options,"
    " estimated_time_seconds, submitter, version, submitted_at, started_at, completed_at, updated_at"
)


async def get_execution(conn: AsyncConnection[Any], execution_id: str) -> dict[str, Any] | None:
    """One execution row, or None."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM executions WHERE execution_id = %s", (execution_id,))
        return await cur.fetchone()


async def get_executions(conn: AsyncConnection[Any], execution_ids: list[str]) -> list[dict[str, Any]]:
    """The rows of those executions that exist."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM executions WHERE execution_id = ANY(%s::uuid[])", (execution_ids,))
        return await cur.fetchall()


async def list_executions(
    conn: AsyncConnection[Any], submitter: str | None, status: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """A page of executions, newest first, of one submitter (None: everyone's), and the total count."""
    where, params = ["true"], []
    if submitter is not None:
        where.append("submitter = %s")
        params.append(submitter)
    if status is not None:
        where.append("status = %s")
        params.append(status)
    condition = " AND ".join(where)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS} FROM executions WHERE {condition} ORDER BY submitted_at DESC, execution_id"
            " LIMIT %s OFFSET %s",
            (*params, limit, offset),
        )
        rows = await cur.fetchall()
        await cur.execute(f"SELECT count(*) AS n FROM executions WHERE {condition}", tuple(params))
        total = await cur.fetchone()
    return rows, int(total["n"]) if total else 0
