"""Execution commands and their handlers: ExecuteGraph (validates the graph), node steps, cancel."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec

from commands.envelope import CommandEnvelope
from domain.errors import DomainError
from domain.execution import Execution, NodeRecord
from domain.graph import MAX_NODES, parse_graph
from domain.nodes.catalog import encoded_size
from domain.schema import validate

MAX_INPUTS_BYTES = 1024 * 1024
# Options the system reads; others are kept as given (clients may tag executions).
OPTIONS_SCHEMA = {
    "type": "object",
    "properties": {"node_timeout_seconds": {"type": "number", "minimum": 0.1, "maximum": 3600}},
}
EXECUTE_ROLES = ("admin", "user")
NODE_ID = msgspec.Meta(min_length=1, max_length=64)


class ExecuteGraph(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    graph: dict[str, Any]
    inputs: dict[str, Any] = {}
    options: dict[str, Any] = {}


class StartNode(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    node_id: str


class CompleteNode(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A claimed (sink) node's result; ``finish`` completes the execution once every node has."""

    node_id: str
    summary: dict[str, Any]
    output: dict[str, Any] | None = None
    output_location: str | None = None
    finish: bool = False


class RecordNode(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A side-effect-free node's start and result in one command; ``finish`` completes the execution.

    Executors since RecordNodes send that; this one stays for commands an older executor sent."""

    node_id: str
    summary: dict[str, Any]
    output: dict[str, Any] | None = None
    output_location: str | None = None
    finish: bool = False


class NodeResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    node_id: Annotated[str, NODE_ID]
    summary: dict[str, Any]
    output: dict[str, Any] | None = None
    output_location: str | None = None


class RecordNodes(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Side-effect-free nodes' starts and results in one command (those one executor finished within
    ``execution.record_linger_ms`` of each other), in order; ``finish`` completes the execution."""

    nodes: Annotated[list[NodeResult], msgspec.Meta(min_length=1, max_length=MAX_NODES)]
    finish: bool = False


class FailNode(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    node_id: str
    error: str


class FailExecution(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    error: str


class CompleteExecution(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class CancelExecution(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class ExecutionNotFound(DomainError):
    code = "not_found"


class ExecutionExists(DomainError):
    code = "conflict"


class InvalidExecution(DomainError):
    code = "invalid"


class NotAllowed(DomainError):
    code = "forbidden"


def execute_graph(aggregate: Execution | None, command: ExecuteGraph, envelope: CommandEnvelope) -> Execution:
    if envelope.actor.role not in EXECUTE_ROLES:  # the API's guards check this too; this is the last word
        raise NotAllowed(f"the {envelope.actor.role} role may not execute graphs", {"role": envelope.actor.role})
    if aggregate is not None:
        raise ExecutionExists(f"execution {envelope.aggregate_id} already exists")
    if encoded_size(command.inputs) > MAX_INPUTS_BYTES:
        raise InvalidExecution(f"inputs are larger than {MAX_INPUTS_BYTES} bytes")
    problems = [
        {"node_id": None, "port": None, "message": f"option {p} {m}"}
        for p, m in validate(command.options, OPTIONS_SCHEMA)
    ]
    if problems:
        raise InvalidExecution("the options are not valid", {"problems": problems})
    graph = parse_graph(command.graph)  # InvalidGraph (code "invalid_graph") lists the problems
    return Execution(
        id=UUID(envelope.aggregate_id),
        graph=command.graph,
        inputs=command.inputs,
        options=command.options,
        node_order=graph.order,
        estimated_time_seconds=graph.estimated_seconds(),
        submitter=envelope.actor.user_id,
        submitter_role=envelope.actor.role,
    )


def start_node(aggregate: Execution | None, command: StartNode, envelope: CommandEnvelope) -> Execution:
    execution = _existing(aggregate, envelope)
    execution.start_node(command.node_id)
    return execution


def complete_node(aggregate: Execution | None, command: CompleteNode, envelope: CommandEnvelope) -> Execution:
    execution = _existing(aggregate, envelope)
    execution.complete_node(command.node_id, command.summary, command.output, command.output_location, command.finish)
    return execution


def record_node(aggregate: Execution | None, command: RecordNode, envelope: CommandEnvelope) -> Execution:
    execution = _existing(aggregate, envelope)
    record = NodeRecord(command.node_id, command.summary, command.output, command.output_location)
    execution.record_nodes([record], command.finish)
    return execution


def record_nodes(aggregate: Execution | None, command: RecordNodes, envelope: CommandEnvelope) -> Execution:
    execution = _existing(aggregate, envelope)
    records = [NodeRecord(n.node_id, n.summary, n.output, n.output_location) for n in command.nodes]
    execution.record_nodes(records, command.finish)
    return execution


def fail_node(aggregate: Execution | None, command: FailNode, envelope: CommandEnvelope) -> Execution:
    execution = _existing(aggregate, envelope)
    execution.fail_node(command.node_id, command.error[:2000])
    return execution


def fail_execution(aggregate: Execution | None, command: FailExecution, envelope: CommandEnvelope) -> Execution:
    execution = _existing(aggregate, envelope)
    execution.fail(command.error[:2000])
    return execution


def complete_execution(aggregate: Execution | None, command: CompleteExecution, envelope: CommandEnvelope) -> Execution:
    execution = _existing(aggregate, envelope)
    execution.complete()
    return execution


def cancel_execution(aggregate: Execution | None, command: CancelExecution, envelope: CommandEnvelope) -> Execution:
    execution = _existing(aggregate, envelope)
    actor = envelope.actor
    if actor.user_id != execution.submitter and actor.role != "admin":
        # Someone else's execution is invisible to them (REST/GraphQL/WS answer 404): refusing it
        # as forbidden would tell them it exists.
        raise ExecutionNotFound(f"execution {envelope.aggregate_id} does not exist")
    execution.cancel(actor.user_id)
    return execution


def _existing(aggregate: Any, envelope: CommandEnvelope) -> Execution:
    if not isinstance(aggregate, Execution):
        raise ExecutionNotFound(f"execution {envelope.aggregate_id} does not exist")
    return aggregate
