"""The event codec keeps what callers write, whatever its shape (metadata can be any JSON)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from infra.adapters.codec import OrjsonTranscoder
from projections.stored_json import plain

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
