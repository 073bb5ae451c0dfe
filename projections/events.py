"""Events as projections see them: the domain event plus its Kafka headers and position."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent


@dataclass(frozen=True)
class EventRecord:
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
    def from_kafka(cls, record: Any, mapper: Mapper[UUID]) -> EventRecord:
        """Decode one events-topic record; ValueError/KeyError if it is not one of ours."""
        headers = {key: value.decode() for key, value in record.headers}
        aggregate_id = headers["aggregate_id"]
        version = int(headers["aggregate_version"])
        topic = headers["event_type"]
        stored = StoredEvent(
            originator_id=UUID(aggregate_id), originator_version=version, topic=topic, state=record.value
        )
        return cls(
            partition=record.partition,
            offset=record.offset,
            aggregate_id=aggregate_id,
            version=version,
            topic=topic,
            headers=headers,
            state=record.value,
            event=mapper.to_domain_event(stored),
            type=topic.rsplit(":", 1)[-1],
        )
