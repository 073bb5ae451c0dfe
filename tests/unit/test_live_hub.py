"""The live hub outlives a change batch it cannot handle (api/hub.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from api.event_streams import EventStreams
from api.hub import LiveHub
from commands.envelope import Actor
from infra.runtime.settings import EventStreamSettings
from projections.changes import ChangeFeed


class Feed:
    """The change feed's side the hub uses: its positions and one subscription queue."""

    def __init__(self) -> None:
        self.positions: dict[int, int] = {}
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        return self.queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        pass


async def test_a_batch_the_hub_cannot_handle_is_logged_and_the_next_one_still_goes_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    feed = Feed()
    events = EventStreams(cast(Any, feed), cast(Any, None), EventStreamSettings())  # no stream: no read
    hub = LiveHub(cast(Any, feed), cast(Any, None), cast(Any, None), events)
    hub.start()
    try:
        feed.queue.put_nowait({"changes": [{"type": "DataObject.Ingested"}]})  # no id: the hub cannot route it
        feed.positions = {0: 5}
        feed.queue.put_nowait({"changes": []})
        for _ in range(100):
            await asyncio.sleep(0)
            if events.frontier:
                break
        assert events.frontier == {0: 5}  # the second batch advanced the event streams
        assert any(r.levelno == logging.ERROR and "live hub" in r.getMessage() for r in caplog.records)
    finally:
        await hub.stop()


def test_a_subscriber_that_falls_a_queue_behind_the_change_feed_is_told_it_missed_changes() -> None:
    """Its queue full, a subscriber's queued messages give way to one ``missed`` marker (which the
    hub answers with ``resync`` to every connection), instead of losing the oldest without a word."""
    feed = ChangeFeed("postgresql://unused", "public", "read-models", "events", queue_size=3)
    queue = feed.subscribe()
    for offset in range(5):
        feed._fan_out({"projection": "read-models", "partition": 0, "next_offset": offset, "changes": []})
    got = [queue.get_nowait() for _ in range(queue.qsize())]
    assert [m.get("missed") is not None for m in got] == [True, False, False]  # the marker, offsets 3 and 4
    assert got[0]["truncated"] is True and [m["next_offset"] for m in got[1:]] == [3, 4]


class _Pool:
    """A pool whose connections the patched lookup never uses."""

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[None]:
        yield None


async def test_an_execution_followed_while_statuses_are_looked_up_is_looked_up_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whoever follows an execution of the batch by the time it is published gets its status: a subscriber
    who joins during the lookup (it awaits PostgreSQL) is looked up in a second round."""
    feed = Feed()
    hub = LiveHub(cast(Any, feed), cast(Any, _Pool()), cast(Any, None), cast(Any, None))
    early, late = hub.connect(Actor("u1", "admin")), hub.connect(Actor("u2", "admin"))
    hub.subscribe(early, "execution:A")
    lookups: list[list[str]] = []

    async def get_executions(conn: Any, ids: list[str]) -> list[dict[str, Any]]:
        lookups.append(ids)
        if len(lookups) == 1:
            hub.subscribe(late, "execution:B")  # joins while A's status is being read
        return [{"execution_id": i, "status": "completed", "version": 3} for i in ids]

    monkeypatch.setattr("api.hub.get_executions", get_executions)
    monkeypatch.setattr("api.hub.to_status", lambda row: row)
    outgoing: list[tuple[str, dict[str, Any], Any]] = [
        (
            f"execution:{i}",
            {"type": "execution_update", "execution_id": i, "data": {"event": "Completed", "version": 3}},
            {},
        )
        for i in ("A", "B", "C")  # nobody follows C: not read
    ]
    states = await hub._execution_states(outgoing)
    assert lookups == [["A"], ["B"]]
    assert set(states) == {"A", "B"} and states["B"]["status"] == "completed"
