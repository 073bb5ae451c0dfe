"""The event loop every long-running process of ours runs on: uvloop's.

The API already does (uvicorn picks uvloop when it is installed, and uvicorn[standard] installs it).
The workers and the rebuild spend much of their CPU in the loop itself (readiness polling, callbacks,
socket reads and writes for Kafka and PostgreSQL), which uvloop runs in C.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on a uvloop event loop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
