"""Background tasks: the one way to stop one (the API's feeds and caches, the command bus, the workers' heartbeat)."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (None: nothing to stop) and wait until it has finished, so nothing of it runs on.

    Its own CancelledError is the expected end and is not raised; an exception it ended with is. A
    cancellation of the caller while it waits is raised, not swallowed with the task's (the copies this
    replaces suppressed every CancelledError, so ``asyncio.timeout`` around a stop could not end it).
    """
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        caller = asyncio.current_task()
        if caller is not None and caller.cancelling():
            raise
