"""dataChanges filters: checked up front, matched against the object's state after the change."""

from __future__ import annotations

from typing import Any

import pytest
from graphql import GraphQLError

from api.graphql.data_changes import contains, matches, parse_filters
from api.graphql.objects import ChangeType

ROW: dict[str, Any] = {
    "object_id": "6f1c0c64-2f0e-4b7a-9b8e-111111111111",
    "content_type": "text/plain",
    "owner": "u1",
    "metadata": {"source": "crawler", "tags": ["a", "b"], "n": 1, "nested": {"x": True}},
}


def test_metadata_filter_is_containment_like_jsonb() -> None:
    assert contains(ROW["metadata"], {"source": "crawler"})
    assert contains(ROW["metadata"], {"tags": ["b"], "nested": {"x": True}})
    assert not contains(ROW["metadata"], {"tags": ["c"]})
    assert not contains(ROW["metadata"], {"n": True})  # 1 and true differ in jsonb too
    assert not contains(ROW["metadata"], {"missing": None})


def test_every_given_filter_must_match() -> None:
    wanted = {"content_type": "text/plain", "owner": "u1", "change_type": ["ingested", "DELETED"]}
    filters, kinds = parse_filters(wanted)
    assert matches(ROW, ChangeType.INGESTED, filters, kinds)
    assert matches(ROW, ChangeType.DELETED, filters, kinds)
    assert not matches(ROW, ChangeType.ANNOTATED, filters, kinds)
    other, _ = parse_filters({"owner": "u2"})
    assert not matches(ROW, ChangeType.INGESTED, other, None)
    by_id, _ = parse_filters({"object_id": ROW["object_id"], "metadata": {"source": "crawler"}})
    assert matches(ROW, ChangeType.ANNOTATED, by_id, None)


def test_no_filters_match_everything() -> None:
    filters, kinds = parse_filters(None)
    assert kinds is None and matches(ROW, ChangeType.ANNOTATED, filters, kinds)


@pytest.mark.parametrize(
    "bad",
    [{"colour": "red"}, {"change_type": "Renamed"}, {"owner": 3}, "content_type", {"metadata": {"a": "\u0000"}}],
)
def test_malformed_filters_are_a_400(bad: Any) -> None:
    with pytest.raises(GraphQLError) as refused:
        parse_filters(bad)
    assert refused.value.extensions is not None and refused.value.extensions["code"] == 400
