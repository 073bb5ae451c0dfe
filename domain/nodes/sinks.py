"""Sink nodes. They do not write: they return effects that the executor issues as commands."""

from __future__ import annotations

from typing import Any

import orjson

from domain.data_object import ANNOTATION_TYPE_PATTERN, CONTENT_TYPE_PATTERN
from domain.nodes.catalog import Effect, NodeContext, NodeError, NodeResult, NodeType, Port, params_schema
from domain.nodes.sources import UUID_SCHEMA, _param_or_input

MAX_ANNOTATIONS = 100


def _annotate(inputs: dict[str, Any], p: dict[str, Any], _: NodeContext) -> NodeResult:
    object_id = inputs.get("object_id", p.get("object_id"))
    if not isinstance(object_id, str) or not object_id:
        raise NodeError("annotate needs an object id (the object_id param or input)")
    content = inputs["content"]
    items = content if p["each"] and isinstance(content, list) else [content]
    if len(items) > MAX_ANNOTATIONS:
        raise NodeError(f"at most {MAX_ANNOTATIONS} annotations per node")
    planned = [
        {
            "object_id": object_id,
            "annotation_type": p["annotation_type"],
            "content": item,
            "confidence": p["confidence"],
        }
        for item in items
    ]
    return NodeResult({"annotations": planned, "count": len(planned)}, [Effect("annotate", a) for a in planned])


def _store(inputs: dict[str, Any], p: dict[str, Any], _: NodeContext) -> NodeResult:
    content = inputs["content"]
    if isinstance(content, str):
        body, content_type = content, p["content_type"] or "text/plain"
    else:
        body, content_type = orjson.dumps(content).decode(), p["content_type"] or "application/json"
    planned = {"content": body, "content_type": content_type, "metadata": p["metadata"]}
    return NodeResult(
        {"stored": {"content_type": content_type, "size": len(body.encode())}}, [Effect("store", planned)]
    )


NODES = [
    NodeType(
        "annotate",
        "sink",
        "Add the content as an annotation of an object (one per list item with each=true).",
        (Port("content", "any"), Port("object_id", "text", required=False)),
        (Port("annotations", "list"), Port("count", "number")),
        params_schema(
            {
                "object_id": UUID_SCHEMA,
                "annotation_type": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 100,
                    "pattern": ANNOTATION_TYPE_PATTERN,
                    "default": "pipeline",
                },
                "confidence": {"type": "number", "minimum": 0, "maximum": 1, "default": 1.0},
                "each": {"type": "boolean", "default": False},
            }
        ),
        _annotate,
        cost_seconds=0.1,
        check=_param_or_input("object_id"),
    ),
    NodeType(
        "store",
        "sink",
        "Ingest the content as a new data object (JSON unless it is text).",
        (Port("content", "any"),),
        (Port("stored", "json"),),
        params_schema(
            {
                "content_type": {"type": "string", "pattern": f"^$|{CONTENT_TYPE_PATTERN}", "default": ""},
                "metadata": {"type": "object", "default": {}},
            }
        ),
        _store,
        cost_seconds=0.1,
    ),
]
