"""The live hub outlives a change batch it cannot handle (api/hub.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from api.event_streams import EventStreams
from api.hub import LiveHub
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
