"""Event serialization: the eventsourcing Mapper with an orjson transcoder.

orjson writes UUIDs and datetimes as plain strings, which would not come back as the same
types; so values of those types are tagged the way eventsourcing's JSONTranscoder tags them
(``{"_type_": ..., "_data_": ...}``) and restored on decode. A dict of the caller's that has
that very shape (metadata can be any JSON) is escaped as ``{"_type_": "dict", "_data_": {...}}``,
so it comes back as the same dict instead of as a UUID, a datetime, or an error that would stop
every reader of the event. Events written before the escape existed decode as they always did; a
tag-shaped dict whose data does not parse is left as the dict it is. Reading the tags is
projections/stored_json.py's, shared with the readers of stored JSON.

Reading an event (``EventMapper.decode_event``) is the one way stored state becomes a domain event:
eventsourcing's ``to_domain_event`` and the projection runner, which decodes straight from a Kafka
record's headers and value (no StoredEvent), both go through it, so both upcast with the event class's
own ``upcast_vN_vM`` methods in the same loop.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import Mapper, MapperDeserialisationError, StoredEvent, Transcoder
from eventsourcing.utils import resolve_topic

from projections.stored_json import DATA, TAG, is_tag_shaped, loads


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
        return loads(data)


class EventMapper(Mapper[UUID]):
    """eventsourcing's Mapper (orjson transcoder, no cipher or compressor) reading through ``decode_event``."""

    def __init__(self) -> None:
        super().__init__(transcoder=OrjsonTranscoder())

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        return self.decode_event(
            stored_event.topic, stored_event.originator_id, stored_event.originator_version, stored_event.state
        )

    def decode_event(self, topic: str, originator_id: UUID | str, version: int, state: bytes) -> Any:
        """The domain event of class ``topic`` stored as ``state``, upcast to the class's current version.

        What eventsourcing's Mapper.to_domain_event does for UUID-identified aggregates, less the
        StoredEvent and the per-class id conversion lookups (a rebuild decodes every event of the log).
        """
        cls = resolve_topic(topic)
        try:
            event_state: dict[str, Any] = self.transcoder.decode(state)
        except Exception as exc:
            raise MapperDeserialisationError(
                f"Failed to deserialise state of stored event with topic {topic!r}, originator_id"
                f" {originator_id!r} and originator_version {version}: {exc}"
            ) from exc
        event_state["originator_id"] = originator_id
        event_state["originator_version"] = version
        class_version = getattr(cls, "class_version", 1)
        from_version = event_state.pop("class_version", 1)
        while from_version < class_version:  # the class's own upcasters, oldest first
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(event_state)
            from_version += 1
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", event_state)
        return event


def make_mapper() -> EventMapper:
    """The one mapper used to write and read events and snapshots."""
    return EventMapper()
