"""Event serialization: the eventsourcing Mapper with an orjson transcoder.

orjson writes UUIDs and datetimes as plain strings, which would not come back as the same
types; so values of those types are tagged the way eventsourcing's JSONTranscoder tags them
(``{"_type_": ..., "_data_": ...}``) and restored on decode.
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
        return {k: _tag(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_tag(v) for v in value]
    if isinstance(value, UUID):
        return {_TAG: "uuid_hex", _DATA: value.hex}
    if isinstance(value, datetime):
        return {_TAG: "datetime_iso", _DATA: value.isoformat()}
    return value


def _untag(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 2 and _TAG in value and _DATA in value:
            kind, data = value[_TAG], value[_DATA]
            if kind == "uuid_hex":
                return UUID(data)
            if kind == "datetime_iso":
                return datetime.fromisoformat(data)
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
