"""Golden serialized examples: the stored shape of every event type may only grow by optional fields."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent

from domain.data_object import DataObject
from infra.adapters.codec import make_mapper

ID = UUID("0f8fad5b-d9cb-469f-a165-70867728950e")
AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
TS = '{"_type_":"datetime_iso","_data_":"2026-01-02T03:04:05.678901+00:00"}'

# Event classes are dataclasses made at runtime by eventsourcing; mypy cannot see their fields.
Ingested: Any = DataObject.Ingested
Annotated: Any = DataObject.Annotated
Deleted: Any = DataObject.Deleted

GOLDEN: list[tuple[Aggregate.Event, str]] = [
    (
        Ingested(
            originator_id=ID,
            originator_version=1,
            timestamp=AT,
            originator_topic="domain.data_object:DataObject",
            content_type="text/plain",
            content_hash="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            size=4,
            location="blob://sha256/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            metadata={"source": "golden"},
            owner="alice",
        ),
        '{"timestamp":' + TS + ',"originator_topic":"domain.data_object:DataObject","content_type":"text/plain",'
        '"content_hash":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","size":4,'
        '"location":"blob://sha256/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",'
        '"metadata":{"source":"golden"},"owner":"alice"}',
    ),
    (
        Annotated(
            originator_id=ID,
            originator_version=2,
            timestamp=AT,
            annotation_id="a-1",
            annotation_type="label",
            content={"label": "cat"},
            confidence=0.9,
            annotator="alice",
            source="user",
        ),
        '{"timestamp":' + TS + ',"annotation_id":"a-1","annotation_type":"label","content":{"label":"cat"},'
        '"confidence":0.9,"annotator":"alice","source":"user","class_version":2}',
    ),
    (
        Deleted(originator_id=ID, originator_version=3, timestamp=AT, deleted_by="alice"),
        '{"timestamp":' + TS + ',"deleted_by":"alice"}',
    ),
]


@pytest.mark.parametrize(("event", "golden"), GOLDEN, ids=lambda v: type(v).__qualname__)
def test_event_serializes_to_its_golden_example(event: Aggregate.Event, golden: str) -> None:
    stored = make_mapper().to_stored_event(event)
    assert stored.state.decode() == golden
    assert stored.topic == f"domain.data_object:{type(event).__qualname__}"


@pytest.mark.parametrize(("event", "golden"), GOLDEN, ids=lambda v: type(v).__qualname__)
def test_golden_example_deserializes_to_the_same_event(event: Aggregate.Event, golden: str) -> None:
    stored = StoredEvent(
        ID, event.originator_version, f"domain.data_object:{type(event).__qualname__}", golden.encode()
    )
    assert make_mapper().to_domain_event(stored) == event


def test_every_data_object_event_type_has_a_golden_example() -> None:
    declared = {
        name
        for name, value in vars(DataObject).items()
        if isinstance(value, type) and issubclass(value, Aggregate.Event) and name not in {"Event", "Created"}
    }
    assert declared == {type(event).__name__ for event, _ in GOLDEN}


def test_golden_examples_are_valid_json() -> None:
    for _, golden in GOLDEN:
        assert isinstance(orjson.loads(golden), dict)


# DataObject.Annotated as class_version 1 wrote it (before ``source``): it must still read, upcast.
ANNOTATED_V1 = (
    '{"timestamp":' + TS + ',"annotation_id":"a-1","annotation_type":"label","content":{"label":"cat"},'
    '"confidence":0.9,"annotator":"alice"}'
)


def test_annotated_v1_is_upcast_to_v2_with_an_unknown_source() -> None:
    stored = StoredEvent(ID, 2, "domain.data_object:DataObject.Annotated", ANNOTATED_V1.encode())
    event: Any = make_mapper().to_domain_event(stored)
    golden_v2: Any = GOLDEN[1][0]
    assert event == Annotated(**{**vars(golden_v2), "source": "unknown"})
    # Written again, it takes the current shape.
    assert make_mapper().to_stored_event(event).state.decode() == GOLDEN[1][1].replace('"user"', '"unknown"')


def test_an_upcast_v1_annotation_folds_into_the_aggregate() -> None:
    mapper = make_mapper()
    ingested: Any = mapper.to_domain_event(
        StoredEvent(ID, 1, "domain.data_object:DataObject.Ingested", GOLDEN[0][1].encode())
    )
    annotated: Any = mapper.to_domain_event(
        StoredEvent(ID, 2, "domain.data_object:DataObject.Annotated", ANNOTATED_V1.encode())
    )
    obj: Any = ingested.mutate(None)
    obj = annotated.mutate(obj)
    assert (obj.version, obj.annotation_count) == (2, 1)
