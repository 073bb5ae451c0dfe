"""Golden serialized examples: the stored shape of every event type may only grow by optional fields."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent

from domain.admin_roster import AdminRoster
from domain.conversation import Conversation
from domain.data_object import DataObject
from domain.inbox import Inbox
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


C: Any = Conversation  # event classes are made at runtime; mypy cannot see their fields
SOURCE = {"object_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "snippet": "<b>kafka</b> keeps", "score": 0.5}
CONVERSATION_GOLDEN: list[tuple[Aggregate.Event, str]] = [
    (
        C.Started(
            originator_id=ID,
            originator_version=1,
            timestamp=AT,
            originator_topic="domain.conversation:Conversation",
            owner="alice",
        ),
        '{"timestamp":' + TS + ',"originator_topic":"domain.conversation:Conversation","owner":"alice"}',
    ),
    (
        C.MessagePosted(
            originator_id=ID,
            originator_version=2,
            timestamp=AT,
            message_id="m-1",
            content="what is kafka?",
            author="alice",
        ),
        '{"timestamp":' + TS + ',"message_id":"m-1","content":"what is kafka?","author":"alice"}',
    ),
    (
        C.ResponseGiven(
            originator_id=ID,
            originator_version=3,
            timestamp=AT,
            message_id="m-1",
            kind="answer",
            content="Kafka keeps an ordered log.",
            sources=[SOURCE],
            data={"sentences": []},
        ),
        '{"timestamp":' + TS + ',"message_id":"m-1","kind":"answer","content":"Kafka keeps an ordered log.",'
        '"sources":[{"object_id":"7c9e6679-7425-40de-944b-e07fc1f90ae7","snippet":"<b>kafka</b> keeps","score":0.5}],'
        '"data":{"sentences":[]}}',
    ),
]

INBOX_GOLDEN: list[tuple[Aggregate.Event, str]] = [
    (
        Inbox.Opened(  # type: ignore[call-arg]
            originator_id=ID, originator_version=1, timestamp=AT, originator_topic="domain.inbox:Inbox", owner="alice"
        ),
        '{"timestamp":' + TS + ',"originator_topic":"domain.inbox:Inbox","owner":"alice"}',
    ),
    (
        Inbox.NotificationsRead(originator_id=ID, originator_version=2, timestamp=AT, notification_ids=["n-1"]),  # type: ignore[call-arg]
        '{"timestamp":' + TS + ',"notification_ids":["n-1"]}',
    ),
]


ADMIN = "eb84f73c-67e4-55f7-b2e1-3c9ecadef49e"
ROSTER_GOLDEN: list[tuple[Aggregate.Event, str]] = [
    (
        AdminRoster.Opened(  # type: ignore[call-arg]
            originator_id=ID,
            originator_version=1,
            timestamp=AT,
            originator_topic="domain.admin_roster:AdminRoster",
            admins=[ADMIN],
        ),
        '{"timestamp":' + TS + ',"originator_topic":"domain.admin_roster:AdminRoster","admins":["' + ADMIN + '"]}',
    ),
    (
        AdminRoster.Seated(originator_id=ID, originator_version=2, timestamp=AT, user_id=ADMIN),  # type: ignore[call-arg]
        '{"timestamp":' + TS + ',"user_id":"' + ADMIN + '"}',
    ),
    (
        AdminRoster.Unseated(originator_id=ID, originator_version=3, timestamp=AT, user_id=ADMIN),  # type: ignore[call-arg]
        '{"timestamp":' + TS + ',"user_id":"' + ADMIN + '"}',
    ),
]


def _topic(event: Aggregate.Event) -> str:
    return f"{type(event).__module__}:{type(event).__qualname__}"


EVERY = [*GOLDEN, *CONVERSATION_GOLDEN, *INBOX_GOLDEN, *ROSTER_GOLDEN]


@pytest.mark.parametrize(("event", "golden"), EVERY, ids=lambda v: type(v).__qualname__)
def test_event_serializes_to_its_golden_example(event: Aggregate.Event, golden: str) -> None:
    stored = make_mapper().to_stored_event(event)
    assert stored.state.decode() == golden
    assert stored.topic == _topic(event)


@pytest.mark.parametrize(("event", "golden"), EVERY, ids=lambda v: type(v).__qualname__)
def test_golden_example_deserializes_to_the_same_event(event: Aggregate.Event, golden: str) -> None:
    stored = StoredEvent(ID, event.originator_version, _topic(event), golden.encode())
    assert make_mapper().to_domain_event(stored) == event


@pytest.mark.parametrize(
    ("aggregate", "examples"),
    [
        (DataObject, GOLDEN),
        (Conversation, CONVERSATION_GOLDEN),
        (Inbox, INBOX_GOLDEN),
        (AdminRoster, ROSTER_GOLDEN),
    ],
)
def test_every_event_type_has_a_golden_example(aggregate: type[Aggregate], examples: list[Any]) -> None:
    declared = {
        name
        for name, value in vars(aggregate).items()
        if isinstance(value, type) and issubclass(value, Aggregate.Event) and name not in {"Event", "Created"}
    }
    assert declared == {type(event).__name__ for event, _ in examples}


def test_golden_examples_are_valid_json() -> None:
    for _, golden in EVERY:
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


# DataObject.Annotated as class_version 1 wrote it (before ``source``): it must still read, upcast.
ANNOTATED_V1 = (
    '{"timestamp":' + TS + ',"annotation_id":"a-1","annotation_type":"label","content":{"label":"cat"},'
    '"confidence":0.9,"annotator":"alice"}'
)


def test_annotated_v1_is_upcast_to_v2_with_an_unknown_source() -> None:
    stored = StoredEvent(ID, 2, "domain.data_object:DataObject.Annotated", ANNOTATED_V1.encode())
    event: Any = make_mapper().to_domain_event(stored)
    golden_v2: Any = GOLDEN[2][0]
    assert event == Annotated(**{**vars(golden_v2), "source": "unknown"})
    # Written again, it takes the current shape.
    assert make_mapper().to_stored_event(event).state.decode() == GOLDEN[2][1].replace('"user"', '"unknown"')


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
