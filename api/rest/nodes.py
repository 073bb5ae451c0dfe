"""REST: the node catalog (the spec's available_nodes)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, get
from litestar.params import QueryParameter

from api.inputs import require_one_of
from api.rbac import Permission, requires
from domain.nodes import available_nodes, categories

# The documented parameter: one of the categories (absent: all), checked by node_catalog, not by litestar.
CATEGORY_SCHEMA = {"type": "string", "one_of": None, "enum": categories()}


def node_catalog(category: str | None) -> list[dict[str, Any]]:
    """The node types, optionally of one category; an unknown category is a 400 naming the categories
    (REST and GraphQL ``availableNodes`` alike)."""
    return available_nodes(require_one_of(category, categories(), "category", "node category", "categories"))


class NodesController(Controller):
    path = "/api/v1/nodes"
    tags = ["execution"]  # the spec's tag name

    @get("/", operation_id="listNodes", summary="List the available node types", opt=requires(Permission.READ))
    async def list_nodes(
        self, category: Annotated[str | None, QueryParameter(required=False, schema_extra=CATEGORY_SCHEMA)] = None
    ) -> list[dict[str, Any]]:
        """Node types with their ports and JSON-Schema parameters, optionally of one category."""
        return node_catalog(category)
