"""The node catalog: node types with typed ports, a parameter schema and a pure implementation.

Nodes are deterministic functions of (inputs, params, context). The context carries the
execution's inputs and the few callables that need I/O (loading an object's content, searching
objects); the executor supplies them, so this package stays free of I/O. Sinks do not write
either: they return effects (annotations to add, objects to store) that the executor turns into
commands.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from domain.errors import DomainError
from domain.schema import validate, with_defaults

# Port types. "any" matches everything; "json" accepts every value too (it is what data nodes take).
PORT_TYPES = ("text", "list", "json", "number", "any")
MAX_INPUT_BYTES = 2 * 1024 * 1024  # per node, all inputs together, JSON-encoded
MAX_OUTPUT_BYTES = 8 * 1024 * 1024


class NodeError(DomainError):
    """A node could not produce its outputs (bad input at run time, a limit, a missing object)."""

    code = "node_failed"


@dataclass(frozen=True)
class Port:
    name: str
    type: str
    required: bool = True


@dataclass(frozen=True)
class Effect:
    """Something a sink asks the executor to do through the command path."""

    kind: str  # "annotate" or "store"
    payload: dict[str, Any]


@dataclass(frozen=True)
class NodeResult:
    outputs: dict[str, Any]
    effects: list[Effect] = field(default_factory=list)


@dataclass(frozen=True)
class NodeContext:
    inputs: Mapping[str, Any] = field(default_factory=dict)
    load_object: Callable[[str], str] | None = None  # object id -> its content as text
    search: Callable[[str, int], list[dict[str, Any]]] | None = None  # (query, limit) -> objects


Run = Callable[[dict[str, Any], dict[str, Any], NodeContext], NodeResult | dict[str, Any]]
Check = Callable[[dict[str, Any], set[str]], list[str]]  # (params, wired input ports) -> problems


@dataclass(frozen=True)
class NodeType:
    name: str
    category: str
    description: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    params: dict[str, Any]  # JSON Schema of the parameters
    run: Run
    cost_seconds: float = 0.05  # a rough estimate, for estimated_time_seconds
    check: Check | None = None  # rules the schema cannot state, e.g. "param or wired input"
    isolated: bool = False  # may run away (a regex): the executor runs it in a process it can kill

    def input(self, name: str) -> Port | None:
        return next((p for p in self.inputs if p.name == name), None)

    def output(self, name: str) -> Port | None:
        return next((p for p in self.outputs if p.name == name), None)

    def describe(self) -> dict[str, Any]:
        """The public listing of this node type (GET /api/v1/nodes)."""
        return {
            "type": self.name,
            "category": self.category,
            "description": self.description,
            "inputs": [{"name": p.name, "type": p.type, "required": p.required} for p in self.inputs],
            "outputs": [{"name": p.name, "type": p.type} for p in self.outputs],
            "params": self.params,
        }


def params_schema(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


def compatible(produced: str, accepted: str) -> bool:
    """Can an output of type ``produced`` feed an input of type ``accepted``?"""
    if produced == "list" and accepted == "text":
        return True  # text inputs join a list of strings (e.g. chunks) and check it at run time
    return produced == accepted or "any" in (produced, accepted) or accepted == "json"


def encoded_size(value: Any) -> int:
    return len(orjson.dumps(value, default=str))


def run_node(node_type: NodeType, inputs: dict[str, Any], params: dict[str, Any], context: NodeContext) -> NodeResult:
    """Run one node with its limits: parameters checked and defaulted, input and output sizes bounded."""
    problems = validate(params, node_type.params)
    if problems:
        raise NodeError("; ".join(f"{p or 'params'} {m}" for p, m in problems))
    if encoded_size(inputs) > MAX_INPUT_BYTES:
        raise NodeError(f"inputs of {node_type.name} exceed {MAX_INPUT_BYTES} bytes")
    for port in node_type.inputs:
        if port.required and port.name not in inputs:
            raise NodeError(f"input {port.name!r} is missing")
    result = node_type.run(inputs, with_defaults(params, node_type.params), context)
    if isinstance(result, dict):
        result = NodeResult(result)
    if encoded_size(result.outputs) > MAX_OUTPUT_BYTES:
        raise NodeError(f"outputs of {node_type.name} exceed {MAX_OUTPUT_BYTES} bytes")
    return result


def as_text(value: Any, port: str = "text") -> str:
    """Text inputs accept strings, and lists of strings (joined by blank lines)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n\n".join(value)
    raise NodeError(f"input {port!r} must be text, got {type(value).__name__}")


def as_list(value: Any, port: str = "items") -> list[Any]:
    if isinstance(value, list):
        return value
    raise NodeError(f"input {port!r} must be a list, got {type(value).__name__}")
