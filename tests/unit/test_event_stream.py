"""Event streams, the pure parts: positions, parameters, the bounded live buffer, visibility."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api.event_streams import EventStream, stream_request, visible
from commands.envelope import Actor
from infra.runtime.settings import EventStreamSettings
from projections.event_stream import EVENT_TYPES, StreamFilter, expand_types, format_position, parse_position

SETTINGS = EventStreamSettings(buffer_events=3, buffer_bytes=1000, max_types=2)
OBJECT = "0f8fad5b-d9cb-469f-a165-70867728950e"


def row(offset: int, owner: str = "alice", kind: str = "DataObject.Ingested", size: int = 10) -> dict[str, Any]:
    return {
        "topic_partition": 0,
        "topic_offset": offset,
        "event_type": kind,
        "aggregate_id": OBJECT,
        "owner": owner,
        "payload": "x" * size,
    }


def test_a_position_round_trips_and_a_write_token_is_one() -> None:
    assert parse_position("1:17, 0:41") == {1: 17, 0: 41}
    assert format_position({1: 17, 0: 41}) == "0:41,1:17"
    assert parse_position("") == {}
    assert parse_position("3:0") == {3: 0}  # a write's position token


@pytest.mark.parametrize(
    "token", ["0", "0:", ":1", "a:1", "0:-1", "0:1,0:2", "5000:1", f"0:{2**63}", "0:1;1:2", "\u0661:1", "0:\u0661"]
)
def test_malformed_positions_are_refused(token: str) -> None:
    with pytest.raises(ValueError):
        parse_position(token)


def test_types_expand_aggregates_and_refuse_unknown_names() -> None:
    assert expand_types(["Execution"]) == EVENT_TYPES["Execution"]
    assert "Execution.NodeCompleted" in EVENT_TYPES["Execution"]
    assert expand_types(["User.Disabled", "DataObject.Deleted"]) == {"User.Disabled", "DataObject.Deleted"}
    with pytest.raises(ValueError, match="unknown event type"):
        expand_types(["DataObject.Exploded"])


def test_stream_parameters_are_checked() -> None:
    assert stream_request(None, None, None, SETTINGS).after == {}
    assert stream_request("now", None, None, SETTINGS).after is None
    request = stream_request("0:3", ["DataObject.Annotated"], OBJECT.upper(), SETTINGS)
    assert request.after == {0: 3}
    assert request.filter == StreamFilter(frozenset({"DataObject.Annotated"}), OBJECT)
    bad_parameters: list[tuple[Any, Any, Any]] = [
        ({"x": 1}, None, None),
        ("0:1", ["User", "Execution", "DataObject"], None),  # more than max_types
        ("0:1", [], None),
        ("0:1", "User", None),
        ("0:1", None, "nope"),
        ("0:1", None, 7),
        ("x" * 40_000, None, None),
    ]
    for after, types, aggregate_id in bad_parameters:
        with pytest.raises(ValueError):
            stream_request(after, types, aggregate_id, SETTINGS)


def test_visibility_is_admins_and_owners() -> None:
    assert visible(Actor("admin-id", "admin"), row(1, owner="alice"))
    assert visible(Actor("admin-id", "admin"), row(1, owner=None))  # type: ignore[arg-type]
    assert visible(Actor("alice", "viewer"), row(1, owner="alice"))
    assert not visible(Actor("bob", "user"), row(1, owner="alice"))
    assert not visible(Actor("bob", "user"), row(1, owner=None))  # type: ignore[arg-type]


async def test_the_buffer_filters_then_overflows_by_count_and_by_bytes() -> None:
    stream = EventStream(Actor("alice", "user"), StreamFilter(frozenset({"DataObject.Ingested"})), SETTINGS)
    assert not stream.offer([row(1), row(2, owner="bob"), row(3, kind="DataObject.Deleted")], fresh=False)
    assert [r["topic_offset"] for r in await stream.take() or []] == [1]
    assert stream.offer([row(n) for n in range(4, 8)], fresh=False)  # 4 > buffer_events
    assert await stream.take() is None and not stream.rows
    assert not stream.offer([row(9)], fresh=False)  # once overflowed it holds nothing more
    stream.reset()
    assert not stream.rows
    assert stream.offer([row(10, size=600), row(11, size=600)], fresh=False)  # 1200 > buffer_bytes


async def test_take_waits_for_rows_and_wakes_for_a_re_check() -> None:
    stream = EventStream(Actor("alice", "user"), StreamFilter(), SETTINGS)
    waiting = asyncio.create_task(stream.take())
    await asyncio.sleep(0)
    assert not waiting.done()
    stream.offer([row(1, owner="bob")], fresh=True)  # nothing to deliver, but the caller may have changed
    assert await waiting == [] and stream.fresh
