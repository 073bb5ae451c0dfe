"""commands.tasks.cancel_and_wait: the one way a background task is stopped."""

from __future__ import annotations

import asyncio

import pytest

from commands.tasks import cancel_and_wait


async def test_the_task_is_cancelled_and_finished_when_it_returns() -> None:
    cleaned = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # its clean-up still awaits: the stop waits for it
            cleaned.set()

    task = asyncio.create_task(forever())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled() and cleaned.is_set()
    await cancel_and_wait(task)  # stopping twice, or nothing, is no error
    await cancel_and_wait(None)


async def test_an_exception_the_task_ended_with_is_raised() -> None:
    async def fails() -> None:
        raise ValueError("broken")

    task = asyncio.create_task(fails())
    await asyncio.wait([task])
    with pytest.raises(ValueError, match="broken"):
        await cancel_and_wait(task)


async def test_the_callers_own_cancellation_is_not_swallowed() -> None:
    """A stop cut short (here by a timeout) ends as the caller was told, not as if the task had ended."""
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()  # its clean-up takes a while

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await cancel_and_wait(task)
    release.set()
    await asyncio.wait([task])
