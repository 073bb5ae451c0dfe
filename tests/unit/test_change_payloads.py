"""A committed batch's changes reach the change feed whole, however many (projections/changes.py)."""

from __future__ import annotations

import uuid

import orjson

from projections.changes import MAX_PAYLOAD, change_payloads


def _changes(count: int) -> list[dict[str, object]]:
    return [{"id": str(uuid.uuid4()), "type": "Execution.NodeCompleted", "version": n} for n in range(count)]


def test_a_batch_that_fits_is_one_payload_as_before() -> None:
    changes = _changes(3)
    (payload,) = change_payloads("read_models", 1, 42, changes)
    assert orjson.loads(payload) == {"projection": "read_models", "partition": 1, "next_offset": 42, "changes": changes}


def test_an_empty_batch_still_announces_its_position() -> None:
    (payload,) = change_payloads("read_models", 0, 7, [])
    assert orjson.loads(payload) == {"projection": "read_models", "partition": 0, "next_offset": 7, "changes": []}


def test_a_large_batch_is_split_into_parts_that_each_fit_and_carry_the_position() -> None:
    changes = _changes(500)  # ~40 KB of changes: a projection catching up
    payloads = change_payloads("read_models", 1, 9000, changes)
    assert len(payloads) > 1
    parts = [orjson.loads(payload) for payload in payloads]
    assert all(len(payload.encode()) <= MAX_PAYLOAD for payload in payloads)
    assert all((p["projection"], p["partition"], p["next_offset"]) == ("read_models", 1, 9000) for p in parts)
    assert not any(p.get("truncated") for p in parts)
    assert [change for p in parts for change in p["changes"]] == changes  # every change once, in order


def test_only_a_change_too_large_for_any_payload_is_left_out_and_said_so() -> None:
    huge = {"id": "x", "type": "DataObject.Updated", "version": 1, "note": "y" * MAX_PAYLOAD}
    small = _changes(2)
    parts = [orjson.loads(p) for p in change_payloads("read_models", 0, 3, [small[0], huge, small[1]])]
    assert [c for p in parts for c in p["changes"]] == small
    assert any(p.get("truncated") for p in parts)
