"""The execution aggregate: one run of a processing graph, node by node, to its end."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError

TERMINAL = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True)
class NodeRecord:
    """A side-effect-free node's result: a summary, and its output inline or where it is stored."""

    node_id: str
    summary: dict[str, Any]
    output: dict[str, Any] | None = None
    output_location: str | None = None


class Execution(Aggregate):
    class Submitted(Aggregate.Created):
        graph: dict[str, Any]
        inputs: dict[str, Any]
        options: dict[str, Any]
        node_order: list[str]
        estimated_time_seconds: float
        submitter: str
        # The submitter's role when submitting (added later: older events have none, read as "user").
        # The executor acts with the weaker of this and the submitter's role at the time of each effect.
        submitter_role: str | None = None

    class NodeStarted(Aggregate.Event):
        node_id: str

    class NodeCompleted(Aggregate.Event):
        node_id: str
        summary: dict[str, Any]  # bounded: a preview of each output
        output: dict[str, Any] | None  # the outputs themselves when small, else None
        output_location: str | None  # a blob holding the outputs when they are large

    class NodeFailed(Aggregate.Event):
        node_id: str
        error: str

    class Completed(Aggregate.Event):
        pass

    class Failed(Aggregate.Event):
        error: str

    class Cancelled(Aggregate.Event):
        cancelled_by: str

    @event(Submitted)
    def __init__(
        self,
        id: UUID,  # eventsourcing takes the aggregate id from an `id` parameter
        graph: dict[str, Any],
        inputs: dict[str, Any],
        options: dict[str, Any],
        node_order: list[str],
        estimated_time_seconds: float,
        submitter: str,
        submitter_role: str | None = None,
    ) -> None:
        self.submitter = submitter
        self.submitter_role = submitter_role
        self.status = "submitted"
        self.nodes: dict[str, str] = {node_id: "pending" for node_id in node_order}

    @property
    def progress(self) -> float:
        finished = sum(1 for state in self.nodes.values() if state in {"completed", "failed"})
        return finished / len(self.nodes) if self.nodes else 1.0

    def start_node(self, node_id: str) -> None:
        self._require_running(node_id)
        if self.nodes[node_id] == "completed":
            raise NodeAlreadyCompleted(f"node {node_id} already completed", {"node_id": node_id})
        self._node_started(node_id)

    @event(NodeStarted)
    def _node_started(self, node_id: str) -> None:
        self.status = "running"
        self.nodes[node_id] = "running"

    def complete_node(
        self,
        node_id: str,
        summary: dict[str, Any],
        output: dict[str, Any] | None,
        output_location: str | None,
        finish: bool = False,
    ) -> None:
        """A claimed node's result; with ``finish`` the execution completes too once every node has."""
        self._require_running(node_id)
        if self.nodes[node_id] != "running":
            raise NodeNotRunning(f"node {node_id} is {self.nodes[node_id]}, not running", {"node_id": node_id})
        self._node_completed(node_id, summary, output, output_location)
        if finish and all(state == "completed" for state in self.nodes.values()):
            self._completed()

    def record_nodes(self, records: Sequence[NodeRecord], finish: bool = False) -> None:
        """Nodes without side effects, each started and completed in one decision (the same two events).

        Running such a node twice changes nothing, so it needs no claim before it runs, and a node
        recorded already (by an earlier executor: the same output) is skipped. With ``finish`` the
        execution completes too once every node is. Nothing left to record is a conflict.
        """
        for record in records:
            self._require_running(record.node_id)
        recorded = False
        for record in records:
            if self.nodes[record.node_id] != "completed":
                self._node_started(record.node_id)
                self._node_completed(record.node_id, record.summary, record.output, record.output_location)
                recorded = True
        completes = finish and all(state == "completed" for state in self.nodes.values())
        if not recorded and not completes:
            node_id = records[0].node_id if records else ""
            raise NodeAlreadyCompleted(f"node {node_id} already completed", {"node_id": node_id})
        if completes:
            self._completed()

    @event(NodeCompleted)
    def _node_completed(
        self, node_id: str, summary: dict[str, Any], output: dict[str, Any] | None, output_location: str | None
    ) -> None:
        self.nodes[node_id] = "completed"

    def fail_node(self, node_id: str, error: str) -> None:
        """A failed node fails the whole execution: both events, one decision."""
        self._require_running(node_id)
        self._node_failed(node_id, error)
        self._failed(f"node {node_id} failed: {error}")

    def fail(self, error: str) -> None:
        """The execution cannot run at all (e.g. its graph no longer validates against the catalog)."""
        self._require_live()
        self._failed(error)

    @event(NodeFailed)
    def _node_failed(self, node_id: str, error: str) -> None:
        self.nodes[node_id] = "failed"

    @event(Failed)
    def _failed(self, error: str) -> None:
        self.status = "failed"

    def complete(self) -> None:
        self._require_live()
        unfinished = [node_id for node_id, state in self.nodes.items() if state != "completed"]
        if unfinished:
            raise NodesUnfinished(f"nodes not completed: {', '.join(unfinished)}", {"nodes": unfinished})
        self._completed()

    @event(Completed)
    def _completed(self) -> None:
        self.status = "completed"

    def cancel(self, cancelled_by: str) -> None:
        self._require_live()
        self._cancelled(cancelled_by)

    @event(Cancelled)
    def _cancelled(self, cancelled_by: str) -> None:
        self.status = "cancelled"

    def _require_live(self) -> None:
        if self.status in TERMINAL:
            raise ExecutionFinished(f"execution {self.id} is {self.status}", {"status": self.status})

    def _require_running(self, node_id: str) -> None:
        self._require_live()
        if node_id not in self.nodes:
            raise UnknownNode(f"the graph has no node {node_id!r}", {"node_id": node_id})


class ExecutionFinished(DomainError):
    code = "conflict"


class NodeAlreadyCompleted(DomainError):
    code = "conflict"


class NodeNotRunning(DomainError):
    code = "conflict"


class NodesUnfinished(DomainError):
    code = "conflict"


class UnknownNode(DomainError):
    code = "invalid"
