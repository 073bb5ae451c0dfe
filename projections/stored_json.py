"""The stored events' JSON tags, read in one place: for the codec's decode and for readers of stored JSON.

The codec (infra/adapters/codec.py) tags UUIDs and datetimes as ``{"_type_": ..., "_data_": ...}``
and escapes a caller's dict of that very shape as ``{"_type_": "dict", "_data_": {...}}``. ``untag``
turns parsed stored JSON back into the values written (UUIDs and datetimes typed); ``plain`` turns it
into what the caller wrote, as JSON (UUIDs and datetimes as strings), for readers that show the stored
JSON without decoding it into events (history, exports, event streams). A tag whose data does not
parse is kept as the dict it is: it was a caller's dict written before the escape existed, never one
of the codec's own. ``loads`` parses and untags stored bytes, walking only where a tag can be.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

TAG = "_type_"
DATA = "_data_"
_CONTAINERS = (dict, list)  # what orjson.loads makes that may hold a tagged value
# A "_type_" key as it appears in JSON text. Inside a JSON string a quote is escaped, so the text holds this
# where an object has such a key (or a value is that string): counting it bounds the keys so named. JSON
# may also spell a key with \u escapes; a text with any is walked whole.
_TAG_KEY = b'"_type_"'
_ESCAPE = b"\\u"


def is_tag_shaped(value: dict[Any, Any]) -> bool:
    return len(value) == 2 and TAG in value and DATA in value


def untag(value: Any) -> Any:
    """``value`` (parsed stored JSON) with the tags resolved to the typed values they stand for."""
    return _resolve(value, typed=True)


def loads(data: bytes) -> Any:
    """Stored JSON bytes parsed, with the tags resolved as ``untag`` does.

    The walk over every value is skipped where no tag can be: a stored event's state has one tag, its
    timestamp, at the top (found by counting ``"_type_"`` keys in the text; see ``_TAG_KEY``), and
    everything else is plain JSON. A document with more keys so named is walked whole, as untag does.
    """
    value = orjson.loads(data)
    if _ESCAPE in data:
        return untag(value)
    tags = data.count(_TAG_KEY)
    if tags == 0:
        return value
    if tags == 1 and type(value) is dict:
        for key, item in value.items():
            if type(item) is dict and TAG in item:  # the one "_type_" key: nothing else needs resolving
                value[key] = _resolve(item, typed=True)
                return value
    return untag(value)


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
