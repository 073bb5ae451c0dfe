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

HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # sha256 of "test"


def ingested(store: str, content: str | None) -> tuple[Aggregate.Event, str]:
    """Ingested with its content in the blob store ("blob") or carried in the event ("inline")."""
    event = Ingested(
        originator_id=ID,
        originator_version=1,
        timestamp=AT,
        originator_topic="domain.data_object:DataObject",
        content_type="text/plain",
        content_hash=HASH,
        size=4,
        location=f"{store}://sha256/{HASH}",
        metadata={"source": "golden"},
        owner="alice",
        content=content,
    )
    golden = (
        '{"timestamp":' + TS + ',"originator_topic":"domain.data_object:DataObject","content_type":"text/plain",'
        f'"content_hash":"{HASH}","size":4,"location":"{store}://sha256/{HASH}",'
        f'"metadata":{{"source":"golden"}},"owner":"alice","content":{orjson.dumps(content).decode()}}}'
    )
    return event, golden


GOLDEN: list[tuple[Aggregate.Event, str]] = [
    ingested("blob", None),
    ingested("inline", "test"),  # small content travels in the event itself (issue 8)
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
        ),
        '{"timestamp":' + TS + ',"annotation_id":"a-1","annotation_type":"label","content":{"label":"cat"},'
        '"confidence":0.9,"annotator":"alice"}',
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


# Stored before ``content`` was added: still read, as content kept in the blob store.
LEGACY_INGESTED = (
    '{"timestamp":' + TS + ',"originator_topic":"domain.data_object:DataObject","content_type":"text/plain",'
    '"content_hash":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","size":4,'
    '"location":"blob://sha256/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",'
    '"metadata":{"source":"golden"},"owner":"alice"}'
)  # written out in full, not built from HASH: it is the stored shape of older events


def test_ingested_stored_before_inline_content_still_reads() -> None:
    stored = StoredEvent(ID, 1, "domain.data_object:DataObject.Ingested", LEGACY_INGESTED.encode())
    event: Any = make_mapper().to_domain_event(stored)
    assert event.content is None and event.location.startswith("blob://")
    obj: Any = event.mutate(None)
    assert obj.owner == "alice" and obj.content_hash == event.content_hash
