"""Data nodes: json_path (a small safe subset), filter, map_field, merge."""

from __future__ import annotations

import re
from typing import Any

from domain.nodes.catalog import NodeContext, NodeError, NodeType, Port, as_list, params_schema

# $, .name, ['name'], [index], [*] -- nothing that evaluates an expression.
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\['([^'\]]*)'\]|\[\*\]|\.\*")
_MISSING = object()


def parse_path(path: str) -> list[str | int | None]:
    """Steps of a JSON path: a key, an index, or None for a wildcard; ValueError if unsupported."""
    if not path.startswith("$"):
        raise ValueError("a path starts with $")
    steps: list[str | int | None] = []
    position = 1
    while position < len(path):
        match = _STEP.match(path, position)
        if match is None:
            raise ValueError(f"unsupported path syntax at {path[position:]!r}")
        key, index, quoted = match.groups()
        steps.append(key if key is not None else int(index) if index is not None else quoted)
        position = match.end()
    return steps


def select(value: Any, steps: list[str | int | None]) -> list[Any]:
    """Every value the path reaches (a wildcard fans out)."""
    current = [value]
    for step in steps:
        following: list[Any] = []
        for item in current:
            if step is None:
                following += list(item.values()) if isinstance(item, dict) else item if isinstance(item, list) else []
            elif _has(item, step):
                following.append(item[step])
        current = following
    return current


def _has(item: Any, step: str | int) -> bool:
    if isinstance(step, int):
        return isinstance(item, list) and step < len(item)
    return isinstance(item, dict) and step in item


def path_problem(path: str) -> str | None:
    try:
        parse_path(path)
    except ValueError as exc:
        return str(exc)
    return None


def _first(value: Any, path: str) -> Any:
    found = select(value, parse_path(path))
    return found[0] if found else _MISSING


def _json_path(inputs: dict[str, Any], p: dict[str, Any], _: NodeContext) -> dict[str, Any]:
    steps = parse_path(p["path"])
    found = select(inputs["data"], steps)
    wildcard = None in steps
    return {"value": found if wildcard else (found[0] if found else p["default"])}


_OPS = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "contains": lambda a, b: b in a,
}


def _filter(inputs: dict[str, Any], p: dict[str, Any], _: NodeContext) -> dict[str, Any]:
    kept = []
    for item in as_list(inputs["items"]):
        value = _first(item, p["path"])
        if p["op"] == "exists":
            ok = value is not _MISSING
        else:
            try:
                ok = value is not _MISSING and bool(_OPS[p["op"]](value, p.get("value")))
            except TypeError:
                ok = False  # incomparable values do not match, rather than failing the node
        if ok:
            kept.append(item)
    return {"items": kept, "count": len(kept)}


def _map_field(inputs: dict[str, Any], p: dict[str, Any], _: NodeContext) -> dict[str, Any]:
    values = []
    for item in as_list(inputs["items"]):
        value = _first(item, p["path"])
        if value is not _MISSING:
            values.append({p["as"]: value} if p["as"] else value)
        elif not p["skip_missing"]:
            values.append(None)
    return {"values": values}


def _merge(inputs: dict[str, Any], p: dict[str, Any], _: NodeContext) -> dict[str, Any]:
    parts = [inputs[name] for name in ("a", "b", "c", "d") if name in inputs]
    if p["mode"] == "object":
        merged: dict[str, Any] = {}
        for index, part in enumerate(parts):
            if isinstance(part, dict):
                merged.update(part)
            else:
                merged["abcd"[index]] = part
        return {"value": merged}
    if p["mode"] == "concat":
        items: list[Any] = []
        for part in parts:
            items += part if isinstance(part, list) else [part]
        return {"value": items}
    if not all(isinstance(part, str) for part in parts):
        raise NodeError("mode 'text' merges text inputs only")
    return {"value": p["separator"].join(parts)}


PATH = {"type": "string", "minLength": 1, "maxLength": 200}


def _check_path(params: dict[str, Any], _: set[str]) -> list[str]:
    path = params.get("path")
    problem = path_problem(path) if isinstance(path, str) else None
    return [problem] if problem else []


NODES = [
    NodeType(
        "json_path",
        "data",
        "Select from JSON by a path: $, .key, ['key'], [index], [*]. A wildcard yields a list.",
        (Port("data", "json"),),
        (Port("value", "json"),),
        params_schema({"path": PATH, "default": {"default": None}}, ("path",)),
        _json_path,
        check=_check_path,
    ),
    NodeType(
        "filter",
        "data",
        "Keep the list items whose value at `path` compares to `value` with `op`.",
        (Port("items", "list"),),
        (Port("items", "list"), Port("count", "number")),
        params_schema(
            {
                "path": {**PATH, "default": "$"},
                "op": {"type": "string", "enum": [*_OPS, "exists"], "default": "eq"},
                "value": {},
            }
        ),
        _filter,
        check=_check_path,
    ),
    NodeType(
        "map_field",
        "data",
        "The value at `path` of every list item (optionally wrapped as {as: value}).",
        (Port("items", "list"),),
        (Port("values", "list"),),
        params_schema(
            {
                "path": PATH,
                "as": {"type": "string", "maxLength": 100, "default": ""},
                "skip_missing": {"type": "boolean", "default": True},
            },
            ("path",),
        ),
        _map_field,
        check=_check_path,
    ),
    NodeType(
        "merge",
        "data",
        "Merge up to four inputs: into one object, one list (concat), or one text.",
        (Port("a", "any"), Port("b", "any", False), Port("c", "any", False), Port("d", "any", False)),
        (Port("value", "json"),),
        params_schema(
            {
                "mode": {"type": "string", "enum": ["object", "concat", "text"], "default": "object"},
                "separator": {"type": "string", "maxLength": 100, "default": "\n"},
            }
        ),
        _merge,
    ),
]
