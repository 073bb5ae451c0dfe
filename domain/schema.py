"""A small validator for the subset of JSON Schema that node parameters use.

Supported keywords: type, properties, required, additionalProperties (false only), default,
enum, minimum, maximum, minLength, maxLength, pattern, items, maxItems. Anything else in a schema is a
programming error in the catalog, not a user error, so it is not checked here.
"""

from __future__ import annotations

import re
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _is_type(value: Any, name: str) -> bool:
    if name == "any":
        return True
    if isinstance(value, bool) and name in {"integer", "number"}:
        return False  # True is an int to Python, not to JSON Schema
    return isinstance(value, _TYPES[name])


def validate(value: Any, schema: dict[str, Any], path: str = "") -> list[tuple[str, str]]:
    """Every problem of ``value`` against ``schema`` as (path, message); empty when valid."""
    problems: list[tuple[str, str]] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_is_type(value, k) for k in kinds):
            return [(path, f"must be of type {' or '.join(kinds)}")]
    if "enum" in schema and value not in schema["enum"]:
        problems.append((path, f"must be one of {schema['enum']}"))
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append((path, f"must be >= {schema['minimum']}"))
        if "maximum" in schema and value > schema["maximum"]:
            problems.append((path, f"must be <= {schema['maximum']}"))
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            problems.append((path, f"must be at least {schema['minLength']} characters"))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append((path, f"must be at most {schema['maxLength']} characters"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append((path, f"must match {schema['pattern']}"))
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append((path, f"must have at most {schema['maxItems']} items"))
        if "items" in schema:
            for index, item in enumerate(value):
                problems += validate(item, schema["items"], f"{path}[{index}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                problems.append((_join(path, name), "is required"))
        for name, item in value.items():
            if name in properties:
                problems += validate(item, properties[name], _join(path, name))
            elif schema.get("additionalProperties") is False:
                problems.append((_join(path, name), "is not a known parameter"))
    return problems


def with_defaults(value: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``value`` with the schema's top-level defaults filled in for absent properties."""
    filled = dict(value)
    for name, prop in schema.get("properties", {}).items():
        if name not in filled and "default" in prop:
            filled[name] = prop["default"]
    return filled


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
