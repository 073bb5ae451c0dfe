"""A stored event's JSON as plain JSON for readers (history, exports, event streams).

The codec (infra/adapters/codec.py) tags UUIDs and datetimes as ``{"_type_": ..., "_data_": ...}``
and escapes a caller's dict of that very shape as ``{"_type_": "dict", "_data_": {...}}``. Readers
that show the stored JSON without decoding it into events turn those back into what the caller
wrote (UUIDs and datetimes as strings). A tag whose data does not parse is shown as it is: it was a
caller's dict written before the escape existed, never one of the codec's own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

TAG = "_type_"
DATA = "_data_"


def plain(value: Any) -> Any:
    """``value`` (parsed stored JSON) with the codec's tags resolved to plain JSON values."""
    if isinstance(value, dict):
        if len(value) == 2 and TAG in value and DATA in value:
            kind, data = value[TAG], value[DATA]
            try:
                if kind == "dict" and isinstance(data, dict):
                    return {k: plain(v) for k, v in data.items()}
                if kind == "uuid_hex" and isinstance(data, str):
                    return str(UUID(data))
                if kind == "datetime_iso" and isinstance(data, str):
                    return datetime.fromisoformat(data).isoformat()
            except ValueError:
                pass
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
