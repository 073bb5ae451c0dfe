"""The stored events' JSON tags, read in one place: for the codec's decode and for readers of stored JSON.

The codec (infra/adapters/codec.py) tags UUIDs and datetimes as ``{"_type_": ..., "_data_": ...}``
and escapes a caller's dict of that very shape as ``{"_type_": "dict", "_data_": {...}}``. ``untag``
turns parsed stored JSON back into the values written (UUIDs and datetimes typed); ``plain`` turns it
into what the caller wrote, as JSON (UUIDs and datetimes as strings), for readers that show the stored
JSON without decoding it into events (history, exports, event streams). A tag whose data does not
parse is kept as the dict it is: it was a caller's dict written before the escape existed, never one
of the codec's own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

TAG = "_type_"
DATA = "_data_"
_CONTAINERS = (dict, list)  # what orjson.loads makes that may hold a tagged value


def is_tag_shaped(value: dict[Any, Any]) -> bool:
    return len(value) == 2 and TAG in value and DATA in value


def untag(value: Any) -> Any:
    """``value`` (parsed stored JSON) with the tags resolved to the typed values they stand for."""
    return _resolve(value, typed=True)


def plain(value: Any) -> Any:
    """``value`` (parsed stored JSON) with the tags resolved to plain JSON values."""
    return _resolve(value, typed=False)


def _resolve(value: Any, typed: bool) -> Any:
    if isinstance(value, dict):
        if is_tag_shaped(value):
            kind, data = value[TAG], value[DATA]
            try:
                if kind == "dict" and isinstance(data, dict):
                    return _resolve_items(data, typed)
                if kind == "uuid_hex" and isinstance(data, str):
                    return UUID(data) if typed else str(UUID(data))
                if kind == "datetime_iso" and isinstance(data, str):
                    return datetime.fromisoformat(data) if typed else datetime.fromisoformat(data).isoformat()
            except ValueError:
                pass
        return _resolve_items(value, typed)
    if isinstance(value, list):
        # Only containers can hold a tag: scalars are kept without a call each (most values are scalars).
        return [_resolve(v, typed) if type(v) in _CONTAINERS else v for v in value]
    return value


def _resolve_items(value: dict[Any, Any], typed: bool) -> dict[Any, Any]:
    return {k: _resolve(v, typed) if type(v) in _CONTAINERS else v for k, v in value.items()}
