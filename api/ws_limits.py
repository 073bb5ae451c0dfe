"""Live connections (WebSockets, SSE event streams) counted per user, so one user cannot hold the
process's every slot, nor a live buffer per stream without bound.

Counted in this API process (a connection lives in one process); ``websocket.max_connections``
still bounds the process as a whole.
"""

from __future__ import annotations

from collections import Counter


class UserConnections:
    """Open WebSocket connections per user id, capped at ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()

    def acquire(self, user_id: str) -> bool:
        """Take a slot for one more connection of ``user_id``; False when they are at the cap."""
        if self._open[user_id] >= self.limit:
            return False
        self._open[user_id] += 1
        return True

    def refusal(self) -> str:
        """What a caller over the cap is told."""
        return f"at most {self.limit} live connections per user (WebSockets, event streams): close one"

    def release(self, user_id: str) -> None:
        """Give back a slot taken by ``acquire``."""
        self._open[user_id] -= 1
        if self._open[user_id] <= 0:
            del self._open[user_id]
