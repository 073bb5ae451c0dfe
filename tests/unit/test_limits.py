"""The shared input rules (commands.limits): what every entry point and the processor refuse."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest

from api.inputs import AnnotationCreate, DataIngestionRequest
from commands.limits import MAX_JSON_DEPTH, InvalidInput, check_json, check_uuid


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"note": "hello\x00world"}, "metadata.note"),
        ({"bad\x00key": 1}, "metadata.'bad\\x00key'"),
        ({"n": 2**64}, "metadata.n"),
        ({"n": -(2**63) - 1}, "metadata.n"),
        ({"list": [1, 2, math.inf]}, "metadata.list[2]"),
        ({"nan": math.nan}, "metadata.nan"),
        ({"k" * 300: 1}, "metadata." + repr("k" * 40)),
        ({"set": {1, 2}}, "metadata.set"),
    ],
)
def test_unstorable_json_is_refused_naming_the_field(value: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_json(value, "metadata")
    assert caught.value.field == field


def test_nesting_is_limited_without_exhausting_the_stack() -> None:
    check_json(nested(MAX_JSON_DEPTH), "metadata")
    with pytest.raises(InvalidInput, match="nest at most"):
        check_json(nested(MAX_JSON_DEPTH + 1), "metadata")
    with pytest.raises(InvalidInput):
        check_json(nested(100_000), "metadata")  # recursion would have died at ~1000


def test_storable_json_passes() -> None:
    check_json({"n": 2**63 - 1, "m": -(2**63), "f": 1.5, "t": True, "z": None, "s": "ünïcode", "l": [[]]}, "m")


def test_ids_must_be_uuids() -> None:
    assert check_uuid("0F8FAD5B-D9CB-469F-A165-70867728950E", "id") == "0f8fad5b-d9cb-469f-a165-70867728950e"
    for bad in ("", "not-a-uuid", "x" * 1000, 5, None):
        with pytest.raises(InvalidInput):
            check_uuid(bad, "object_id")


@pytest.mark.parametrize(
    "fields",
    [
        {"content": "a\x00b", "content_type": "text/plain"},
        {"content": "x", "content_type": "<b>/x"},
        {"content": "x", "content_type": "text/plain; a=\x00"},
        {"content": "x", "content_type": "text/plain", "annotations": [""]},
        {"content": "x", "content_type": "text/plain", "annotations": ["x" * 5000]},
        {"content": "x", "content_type": "text/plain", "annotations": ["bell\x07"]},
    ],
)
def test_ingest_struct_refuses_what_rest_and_graphql_refuse(fields: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(fields, DataIngestionRequest)


@pytest.mark.parametrize("annotation_type", ["", "x" * 101, "<script>", "a\x00b", " leading-space"])
def test_annotation_types_are_words(annotation_type: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"annotation_type": annotation_type, "content": 1}, AnnotationCreate)
    msgspec.convert({"annotation_type": "sentiment:score", "content": 1}, AnnotationCreate)
