"""The event codec keeps what callers write, whatever its shape (metadata can be any JSON)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from eventsourcing.persistence import Mapper, StoredEvent

from infra.adapters.codec import OrjsonTranscoder, make_mapper
from projections.events import EventRecord
from projections.stored_json import loads, plain, untag
from tests.unit import test_event_golden as golden
from tests.unit.test_execution_golden import GOLDEN as EXECUTION_GOLDEN
from tests.unit.test_user import GOLDEN as USER_GOLDEN

TAG_SHAPED: list[Any] = [
    {"_type_": "uuid_hex", "_data_": "0" * 32},  # would come back as a UUID
    {"_type_": "datetime_iso", "_data_": "not a time"},  # would raise and stop every reader
    {"_type_": "dict", "_data_": {"_type_": "uuid_hex", "_data_": "1"}},  # the escape's own shape
    {"_type_": 1, "_data_": [None]},
]


@pytest.mark.parametrize("written", TAG_SHAPED)
def test_a_callers_tag_shaped_dict_comes_back_as_written(written: Any) -> None:
    codec = OrjsonTranscoder()
    value = {"metadata": {"nested": [written]}, "top": written}
    assert codec.decode(codec.encode(value)) == value
    assert plain(orjson.loads(codec.encode(value))) == value


def test_uuids_and_datetimes_keep_their_types_and_read_as_strings() -> None:
    codec = OrjsonTranscoder()
    an_id, other_id, at = uuid.uuid4(), uuid.uuid4(), datetime.now(UTC)
    value = {"id": an_id, "at": at, "list": [other_id]}
    assert codec.decode(codec.encode(value)) == value
    assert plain(orjson.loads(codec.encode(value))) == {"id": str(an_id), "at": at.isoformat(), "list": [str(other_id)]}


def test_a_tag_shaped_dict_written_before_the_escape_decodes_as_the_dict() -> None:
    stored = b'{"metadata": {"_type_": "datetime_iso", "_data_": "x"}}'
    assert OrjsonTranscoder().decode(stored) == {"metadata": {"_type_": "datetime_iso", "_data_": "x"}}
    assert plain(orjson.loads(stored)) == {"metadata": {"_type_": "datetime_iso", "_data_": "x"}}


STORED_TEXTS: list[bytes] = [
    b'{"a": 1, "b": [1, {"c": null}]}',  # no tag: not walked
    b'{"timestamp": {"_type_": "datetime_iso", "_data_": "2026-01-02T03:04:05+00:00"}, "m": {"x": [1]}}',
    b'{"timestamp": {"_type_": "datetime_iso", "_data_": "bad"}, "m": {}}',  # a tag that does not parse
    b'{"m": {"deep": {"_type_": "uuid_hex", "_data_": "' + b"1" * 32 + b'"}}}',  # the one tag, not at the top
    b'{"t": {"_type_": "uuid_hex", "_data_": "' + b"2" * 32 + b'"}, "m": {"_type_": "dict", "_data_": {"k": 1}}}',
    b'{"k": "_type_", "m": {"_type_": "uuid_hex", "_data_": "' + b"3" * 32 + b'"}}',  # the key's text as a value
    b'{"m": {"\\u005ftype_": "uuid_hex", "_data_": "' + b"4" * 32 + b'"}}',  # the key spelt with an escape
    b'{"_type_": "uuid_hex", "_data_": "' + b"5" * 32 + b'"}',  # the whole document a tag
    b'[{"_type_": "uuid_hex", "_data_": "' + b"6" * 32 + b'"}]',
]


@pytest.mark.parametrize("stored", STORED_TEXTS)
def test_loads_resolves_what_untag_resolves(stored: bytes) -> None:
    assert loads(stored) == untag(orjson.loads(stored))


# Every stored shape of the golden examples (every event type), the old ones too: (topic, version, state).
STORED_SHAPES = [
    *(
        (golden._topic(event), event.originator_version, state)
        for event, state in [*golden.EVERY, *EXECUTION_GOLDEN, *USER_GOLDEN]
    ),
    ("domain.data_object:DataObject.Ingested", 1, golden.LEGACY_INGESTED),
    ("domain.data_object:DataObject.Annotated", 2, golden.ANNOTATED_V1),  # upcast to v2
]


@pytest.mark.parametrize(("topic", "version", "state"), STORED_SHAPES, ids=lambda v: str(v)[-40:])
def test_the_runners_decoder_reads_what_eventsourcings_mapper_reads(topic: str, version: int, state: str) -> None:
    """The projection runner decodes a Kafka record with decode_event (no StoredEvent, no eventsourcing
    to_domain_event): the same event, upcast by the same class methods, as eventsourcing's own Mapper."""
    stored = StoredEvent(golden.ID, version, topic, state.encode())
    stock: Any = Mapper(transcoder=OrjsonTranscoder()).to_domain_event(stored)

    class Record:  # what aiokafka hands the runner, with the processor's headers
        partition, offset, value = 0, 7, state.encode()
        headers = [
            ("event_type", topic.encode()),
            ("aggregate_id", str(golden.ID).encode()),
            ("aggregate_version", str(version).encode()),
        ]

    record = EventRecord.from_kafka(Record(), make_mapper())
    assert type(record.event) is type(stock) and vars(record.event) == vars(stock)
    assert make_mapper().to_domain_event(stored) == stock
    assert (record.aggregate_id, record.version, record.type) == (str(golden.ID), version, topic.rsplit(":", 1)[-1])
