"""Events as projections see them: the domain event plus its Kafka headers and position."""

from __future__ import annotations

import functools
from typing import Any, Protocol
from uuid import UUID

import msgspec

# The aggregate ids of recent events as UUID objects: an aggregate's events come in runs (a rebuild meets
# an object's ingest and annotations in one batch), and parsing the id's text into a UUID each time cost
# ~3% of a rebuild's CPU; a cache hit costs a dict lookup in C.
_aggregate_uuid = functools.lru_cache(maxsize=16_384)(UUID)


class EventDecoder(Protocol):
    """What turns a stored event into its domain event (infra.adapters.codec.EventMapper): upcast to the
    class's current version."""

    def decode_event(self, topic: str, originator_id: UUID, version: int, state: bytes) -> Any: ...


class EventRecord(msgspec.Struct, frozen=True):
    """A msgspec struct rather than a frozen dataclass: made once per event of a rebuild, and its
    constructor is C (a frozen dataclass sets each field through object.__setattr__)."""

    partition: int
    offset: int
    aggregate_id: str
    version: int
    topic: str  # the event class topic, e.g. "domain.data_object:DataObject.Ingested"
    headers: dict[str, str]
    state: bytes
    event: Any  # the domain event, upcast to its current class version
    # Short event type, e.g. ``DataObject.Ingested``: a field, not a property, as a batch's grouping into
    # runs asks for it many times per event (a cached_property's lookup was 4% of a rebuild's CPU).
    type: str

    @classmethod
    def from_kafka(cls, record: Any, decoder: EventDecoder) -> EventRecord:
        """Decode one events-topic record; ValueError/KeyError if it is not one of ours."""
        headers = {key: value.decode() for key, value in record.headers}
        aggregate_id = headers["aggregate_id"]
        version = int(headers["aggregate_version"])
        topic = headers["event_type"]
        return cls(
            partition=record.partition,
            offset=record.offset,
            aggregate_id=aggregate_id,
            version=version,
            topic=topic,
            headers=headers,
            state=record.value,
            event=decoder.decode_event(topic, _aggregate_uuid(aggregate_id), version, record.value),
            type=topic.rsplit(":", 1)[-1],
        )
