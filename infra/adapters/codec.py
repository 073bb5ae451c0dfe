"""Event serialization: the eventsourcing Mapper with an orjson transcoder.

orjson writes UUIDs and datetimes as plain strings, which would not come back as the same
types; so values of those types are tagged the way eventsourcing's JSONTranscoder tags them
(``{"_type_": ..., "_data_": ...}``) and restored on decode. A dict of the caller's that has
that very shape (metadata can be any JSON) is escaped as ``{"_type_": "dict", "_data_": {...}}``,
so it comes back as the same dict instead of as a UUID, a datetime, or an error that would stop
every reader of the event. Events written before the escape existed decode as they always did; a
tag-shaped dict whose data does not parse is left as the dict it is. Reading the tags is
projections/stored_json.py's, shared with the readers of stored JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import Mapper, Transcoder

from projections.stored_json import DATA, TAG, is_tag_shaped, untag


def _tag(value: Any) -> Any:
    if isinstance(value, dict):
        tagged = {k: _tag(v) for k, v in value.items()}
        return {TAG: "dict", DATA: tagged} if is_tag_shaped(value) else tagged
    if isinstance(value, list | tuple):
        return [_tag(v) for v in value]
    if isinstance(value, UUID):
        return {TAG: "uuid_hex", DATA: value.hex}
    if isinstance(value, datetime):
        return {TAG: "datetime_iso", DATA: value.isoformat()}
    return value


class OrjsonTranscoder(Transcoder):
    """A fast JSON transcoder that keeps UUID and datetime values typed."""

    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(_tag(obj))

    def decode(self, data: bytes) -> Any:
        return untag(orjson.loads(data))


def make_mapper() -> Mapper[UUID]:
    """The one mapper used to write and read events and snapshots."""
    return Mapper(transcoder=OrjsonTranscoder())
