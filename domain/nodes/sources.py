"""Source nodes: a value from the execution's inputs, a data object's content, a search."""

from __future__ import annotations

from typing import Any

from domain.nodes.catalog import NodeContext, NodeError, NodeType, Port, params_schema


def _input(_: dict[str, Any], p: dict[str, Any], context: NodeContext) -> dict[str, Any]:
    if p["name"] not in context.inputs:
        raise NodeError(f"the execution has no input named {p['name']!r}")
    return {"value": context.inputs[p["name"]]}


def _object(inputs: dict[str, Any], p: dict[str, Any], context: NodeContext) -> dict[str, Any]:
    object_id = inputs.get("object_id", p.get("object_id"))
    if not isinstance(object_id, str) or not object_id:
        raise NodeError("object needs an object id (the object_id param or input)")
    if context.load_object is None:
        raise NodeError("objects cannot be loaded here")
    return {"text": context.load_object(object_id), "object_id": object_id}


def _search(inputs: dict[str, Any], p: dict[str, Any], context: NodeContext) -> dict[str, Any]:
    query = inputs.get("query", p.get("query"))
    if not isinstance(query, str) or not query.strip():
        raise NodeError("search needs a query (the query param or input)")
    if context.search is None:
        raise NodeError("search is not available here")
    objects = context.search(query, p["limit"])
    return {"objects": objects, "ids": [o["object_id"] for o in objects]}


def _param_or_input(name: str) -> Any:
    def check(params: dict[str, Any], wired: set[str]) -> list[str]:
        return [] if name in params or name in wired else [f"needs the {name} param or a wired {name} input"]

    return check


UUID_SCHEMA = {"type": "string", "minLength": 36, "maxLength": 36}
NODES = [
    NodeType(
        "input",
        "source",
        "A value from the execution's inputs: params.name names the key.",
        (),
        (Port("value", "any"),),
        params_schema({"name": {"type": "string", "minLength": 1, "maxLength": 200}}, ("name",)),
        _input,
        cost_seconds=0.01,
    ),
    NodeType(
        "object",
        "source",
        "A data object's content (as text) by id, from the object_id param or input.",
        (Port("object_id", "text", required=False),),
        (Port("text", "text"), Port("object_id", "text")),
        params_schema({"object_id": UUID_SCHEMA}),
        _object,
        cost_seconds=0.05,
        check=_param_or_input("object_id"),
    ),
    NodeType(
        "search",
        "source",
        "Data objects whose metadata or type matches the query (at most `limit`, newest first).",
        (Port("query", "text", required=False),),
        (Port("objects", "list"), Port("ids", "list")),
        params_schema(
            {
                "query": {"type": "string", "minLength": 1, "maxLength": 500},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
            }
        ),
        _search,
        cost_seconds=0.1,
        check=_param_or_input("query"),
    ),
]
