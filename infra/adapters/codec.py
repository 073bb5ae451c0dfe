"""Event serialization: the eventsourcing Mapper with an orjson transcoder.

orjson writes UUIDs and datetimes as plain strings, which would not come back as the same
types; so values of those types are tagged the way eventsourcing's JSONTranscoder tags them
(``{"_type_": ..., "_data_": ...}``) and restored on decode. A dict of the caller's that has
that very shape (metadata can be any JSON) is escaped as ``{"_type_": "dict", "_data_": {...}}``,
so it comes back as the same dict instead of as a UUID, a datetime, or an error that would stop
every reader of the event. Events written before the escape existed decode as they always did; a
tag-shaped dict whose data does not parse is left as the dict it is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import Mapper, Transcoder

_TAG = "_type_"
_DATA = "_data_"
_CONTAINERS = (dict, list)  # what orjson.loads makes that may hold a tagged value


def _tag(value: Any) -> Any:
    if isinstance(value, dict):
        tagged = {k: _tag(v) for k, v in value.items()}
        return {_TAG: "dict", _DATA: tagged} if _is_tag_shaped(value) else tagged
    if isinstance(value, list | tuple):
        return [_tag(v) for v in value]
    if isinstance(value, UUID):
        return {_TAG: "uuid_hex", _DATA: value.hex}
    if isinstance(value, datetime):
        return {_TAG: "datetime_iso", _DATA: value.isoformat()}
    return value


def _is_tag_shaped(value: dict[Any, Any]) -> bool:
    return len(value) == 2 and _TAG in value and _DATA in value


def _untag(value: Any) -> Any:
    if isinstance(value, dict):
        if _is_tag_shaped(value):
            kind, data = value[_TAG], value[_DATA]
            try:
                if kind == "dict" and isinstance(data, dict):
                    return {k: _untag(v) if type(v) in _CONTAINERS else v for k, v in data.items()}
                if kind == "uuid_hex" and isinstance(data, str):
                    return UUID(data)
                if kind == "datetime_iso" and isinstance(data, str):
                    return datetime.fromisoformat(data)
            except ValueError:
                pass  # not one of ours (see the module docstring)
        # Only containers can hold a tag: scalars are kept without a call each (most values are scalars).
        return {k: _untag(v) if type(v) in _CONTAINERS else v for k, v in value.items()}
    if isinstance(value, list):
        return [_untag(v) if type(v) in _CONTAINERS else v for v in value]
    return value


class OrjsonTranscoder(Transcoder):
    """A fast JSON transcoder that keeps UUID and datetime values typed."""

    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(_tag(obj))

    def decode(self, data: bytes) -> Any:
        return _untag(orjson.loads(data))


def make_mapper() -> Mapper[UUID]:
    """The one mapper used to write and read events and snapshots."""
    return Mapper(transcoder=OrjsonTranscoder())
