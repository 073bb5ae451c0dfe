"""Processing graphs: parsing and validation against the node catalog, and their run order.

The format: ``{"nodes": [{"id", "type", "params"}], "edges": [{"from": "a.out", "to": "b.in"}]}``.
Validation lists every problem it finds (node id, port, message) instead of stopping at the first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from domain.errors import DomainError
from domain.nodes import CATALOG
from domain.nodes.catalog import NodeType, compatible, encoded_size
from domain.schema import validate

MAX_NODES = 100
MAX_EDGES = 400
MAX_GRAPH_BYTES = 256 * 1024
_NODE_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Node:
    id: str
    type: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Edge:
    source: str  # node id
    output: str
    target: str
    input: str


@dataclass(frozen=True)
class Graph:
    nodes: dict[str, Node]
    edges: list[Edge]
    order: list[str]  # topological: every node after the nodes it reads from

    def incoming(self, node_id: str) -> list[Edge]:
        return [e for e in self.edges if e.target == node_id]

    def levels(self) -> list[list[str]]:
        """Nodes grouped by depth: a node's inputs all come from earlier levels, so a level may run at once."""
        depth: dict[str, int] = {}
        for node_id in self.order:
            depth[node_id] = 1 + max((depth[e.source] for e in self.incoming(node_id)), default=-1)
        grouped: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for node_id in self.order:
            grouped[depth[node_id]].append(node_id)
        return grouped

    def estimated_seconds(self) -> float:
        return round(sum(CATALOG[n.type].cost_seconds for n in self.nodes.values()) + 0.5, 3)


class InvalidGraph(DomainError):
    code = "invalid_graph"  # 400, as the spec's execute_graph answers a graph that fails validation


def problem(node: str | None, port: str | None, message: str) -> dict[str, Any]:
    return {"node_id": node, "port": port, "message": message}


# An answer lists at most this many problems (the first found) and says how many more there are: a
# graph of 5,000 broken nodes listed 5,001, an answer (and a rejected outcome record) of ~500 kB.
MAX_LISTED_PROBLEMS = 100


def parse_graph(raw: Any) -> Graph:
    """A validated graph; InvalidGraph with ``details["problems"]`` listing the first problems found
    (at most MAX_LISTED_PROBLEMS), ``total_problems`` and ``more_problems`` (how many are not listed)."""
    graph, problems = check_graph(raw)
    if problems or graph is None:
        listed = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(listed)
        message = f"the graph is not valid ({len(problems)} problems"
        message += f"; the first {len(listed)} are listed)" if more else ")"
        details = {"problems": listed, "total_problems": len(problems), "more_problems": more}
        raise InvalidGraph(message, details)
    return graph


def check_graph(raw: Any) -> tuple[Graph | None, list[dict[str, Any]]]:
    """(graph, []) when valid, else (None or a partial graph, every problem found)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("nodes"), list):
        return None, [problem(None, None, "a graph is an object with a list of nodes and a list of edges")]
    if not isinstance(raw.get("edges", []), list):
        return None, [problem(None, None, "edges must be a list")]
    if encoded_size(raw) > MAX_GRAPH_BYTES:
        return None, [problem(None, None, f"the graph is larger than {MAX_GRAPH_BYTES} bytes")]
    problems: list[dict[str, Any]] = []
    _unknown_fields(raw, _GRAPH_FIELDS, "graph", None, problems)
    if len(raw["nodes"]) > MAX_NODES:
        problems.append(problem(None, None, f"at most {MAX_NODES} nodes"))
    if len(raw.get("edges", [])) > MAX_EDGES:
        problems.append(problem(None, None, f"at most {MAX_EDGES} edges"))
    if not raw["nodes"]:
        problems.append(problem(None, None, "a graph needs at least one node"))
    nodes = _nodes(raw["nodes"], problems)
    edges, named = _edges(raw.get("edges", []), nodes, problems)
    _check_inputs(nodes, named, problems)
    order = _order(nodes, edges, problems)
    return Graph(nodes, edges, order), problems


def _nodes(raw_nodes: list[Any], problems: list[dict[str, Any]]) -> dict[str, Node]:
    nodes: dict[str, Node] = {}
    for index, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not _NODE_ID.match(raw["id"]):
            problems.append(problem(None, None, f"node #{index} needs an id of letters, digits, _ and - (<= 64)"))
            continue
        node_id = raw["id"]
        _unknown_fields(raw, _NODE_FIELDS, "node", node_id, problems)
        if node_id in nodes:
            problems.append(problem(node_id, None, "duplicate node id"))
            continue
        type_name = raw.get("type")
        node_type = CATALOG.get(type_name) if isinstance(type_name, str) else None
        if node_type is None:
            problems.append(problem(node_id, None, f"unknown node type {raw.get('type')!r}"))
            continue
        params = raw.get("params", {})
        if not isinstance(params, dict):
            problems.append(problem(node_id, None, "params must be an object"))
            continue
        for path, message in validate(params, node_type.params):
            problems.append(problem(node_id, None, f"param {path} {message}"))
        nodes[node_id] = Node(node_id, node_type.name, params)
    return nodes


# The fields a graph, a node and an edge have. Any other is refused, as a request body's unknown field is:
# a misspelt ``param`` silently ran a node with its default parameters.
_GRAPH_FIELDS = frozenset({"nodes", "edges"})
_NODE_FIELDS = frozenset({"id", "type", "params"})
_EDGE_FIELDS = frozenset({"from", "to"})


def _unknown_fields(
    raw: dict[str, Any], known: frozenset[str], what: str, node_id: str | None, problems: list[dict[str, Any]]
) -> None:
    extra = sorted(str(key)[:64] for key in raw if key not in known)
    if extra:
        fields = ", ".join(map(repr, extra[:10]))
        problems.append(problem(node_id, None, f"unknown {what} field(s) {fields} (known: {', '.join(sorted(known))})"))


def _endpoint(value: Any) -> tuple[str, str] | None:
    if not isinstance(value, str) or value.count(".") != 1:
        return None
    node, port = value.split(".")
    return (node, port) if node and port else None


def _edges(
    raw_edges: list[Any], nodes: dict[str, Node], problems: list[dict[str, Any]]
) -> tuple[list[Edge], set[tuple[str, str]]]:
    """The usable edges, and every existing input port some edge names (so a mismatched edge is
    reported once, as a mismatch, not again as an unwired input)."""
    edges: list[Edge] = []
    wired: set[tuple[str, str]] = set()
    named: set[tuple[str, str]] = set()
    for index, raw in enumerate(raw_edges):
        source = _endpoint(raw.get("from")) if isinstance(raw, dict) else None
        target = _endpoint(raw.get("to")) if isinstance(raw, dict) else None
        if source is None or target is None:
            problems.append(problem(None, None, f'edge #{index} must be {{"from": "node.port", "to": "node.port"}}'))
            continue
        _unknown_fields(raw, _EDGE_FIELDS, f"edge #{index}", None, problems)
        ok = True
        for (node_id, port), side in ((source, "output"), (target, "input")):
            node = nodes.get(node_id)
            if node is None:
                problems.append(problem(node_id, port, f"edge #{index} names an unknown or invalid node"))
                ok = False
            elif getattr(CATALOG[node.type], side)(port) is None:
                problems.append(problem(node_id, port, f"{node.type} has no {side} port {port!r}"))
                ok = False
        if not ok:
            continue
        produced = CATALOG[nodes[source[0]].type].output(source[1])
        accepted = CATALOG[nodes[target[0]].type].input(target[1])
        assert produced is not None and accepted is not None
        named.add(target)
        if not compatible(produced.type, accepted.type):
            problems.append(
                problem(
                    target[0], target[1], f"type mismatch: {'.'.join(source)} is {produced.type}, needs {accepted.type}"
                )
            )
            continue
        if target in wired:
            problems.append(problem(target[0], target[1], "input port is wired more than once"))
            continue
        wired.add(target)
        edges.append(Edge(source[0], source[1], target[0], target[1]))
    return edges, named


def _check_inputs(nodes: dict[str, Node], named: set[tuple[str, str]], problems: list[dict[str, Any]]) -> None:
    for node in nodes.values():
        node_type: NodeType = CATALOG[node.type]
        wired = {port for node_id, port in named if node_id == node.id}
        for port in node_type.inputs:
            if port.required and port.name not in wired:
                problems.append(problem(node.id, port.name, "required input is not wired"))
        if node_type.check is not None:
            problems += [problem(node.id, None, message) for message in node_type.check(node.params, wired)]


def _order(nodes: dict[str, Node], edges: list[Edge], problems: list[dict[str, Any]]) -> list[str]:
    """Kahn's algorithm, ties broken by declaration order so the order is deterministic."""
    pending = {node_id: {e.source for e in edges if e.target == node_id} for node_id in nodes}
    order: list[str] = []
    while True:
        ready = [node_id for node_id, needs in pending.items() if not needs]
        if not ready:
            break
        for node_id in ready:
            order.append(node_id)
            del pending[node_id]
        for needs in pending.values():
            needs.difference_update(ready)
    for node_id in pending:
        problems.append(problem(node_id, None, "node is part of a cycle (or depends on one)"))
    return order
