"""A projector maps event types to SQL; the runner calls it inside its transaction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from psycopg import AsyncCursor

from projections.events import EventRecord

Handler = Callable[[AsyncCursor[Any], EventRecord], Awaitable[None]]


class Projector:
    """Subclasses fill ``handlers`` with one method per event type they fold into their table."""

    name = "projector"

    def handlers(self) -> dict[str, Handler]:
        raise NotImplementedError

    async def apply(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        """Apply one event; event types this projector does not know are ignored."""
        handler = self.handlers().get(record.type)
        if handler is not None:
            await handler(cur, record)
