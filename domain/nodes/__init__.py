"""Every node type, by name."""

from __future__ import annotations

from domain.nodes import data, regex, sinks, sources, text
from domain.nodes.catalog import NodeType

CATALOG: dict[str, NodeType] = {
    node.name: node for module in (sources, text, regex, data, sinks) for node in module.NODES
}


def categories() -> list[str]:
    """The node categories, sorted (``GET /api/v1/nodes?category=`` takes one of them)."""
    return sorted({node.category for node in CATALOG.values()})


def available_nodes(category: str | None = None) -> list[dict[str, object]]:
    """Descriptions of the node types, optionally of one category, sorted by category then name."""
    nodes = sorted(CATALOG.values(), key=lambda n: (n.category, n.name))
    return [n.describe() for n in nodes if category is None or n.category == category]
