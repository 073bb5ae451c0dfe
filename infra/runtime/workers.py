"""Worker process main loops: the command processor, the projection runner, the graph executor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from commands.tasks import cancel_and_wait
from infra.runtime import heap
from infra.runtime.bootstrap import build_processor, build_runner, require_services
from infra.runtime.heartbeat import Progressing, beat, heartbeat_path
from infra.runtime.settings import Settings
from infra.runtime.tracing import shutdown_tracing, tracer_for

log = logging.getLogger("pipeline.workers")


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


@contextlib.asynccontextmanager
async def _heartbeat(settings: Settings, name: str, source: Progressing) -> AsyncIterator[None]:
    """Write the worker's heartbeat (infra.runtime.heartbeat) while the body runs."""
    task = asyncio.create_task(beat(heartbeat_path(settings.storage.data_dir, name), name, source))
    try:
        yield
    finally:
        await cancel_and_wait(task)


async def run_processor(settings: Settings) -> None:
    """Run the command processor until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    _stop_on_signals(stop)
    processor = await build_processor(settings, tracer_for(settings.monitoring, "processor"))
    heap.settle()  # started: what exists now lives as long as the process
    log.info("command processor started (group %s)", processor.config.group_id)
    try:
        async with _heartbeat(settings, "processor", processor):
            await processor.run(stop)
    finally:
        shutdown_tracing()  # export the last spans


async def run_projections(settings: Settings) -> None:
    """Run the projection runner for the live schema until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    _stop_on_signals(stop)
    runner = await build_runner(settings, tracer=tracer_for(settings.monitoring, "projections"))
    heap.settle()
    log.info("projection runner started (schema %s)", settings.database.schema)
    try:
        async with _heartbeat(settings, "projections", runner):
            await runner.run(stop)
    finally:
        await runner.pool.close()
        shutdown_tracing()


async def run_executor(settings: Settings) -> None:
    """Run the graph executor until SIGINT/SIGTERM."""
    from infra.runtime.executor import build_executor

    require_services(settings)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    service = await build_executor(settings)
    heap.settle()
    log.info("graph executor started (group %s)", service.executor.config.group_id)
    async with _heartbeat(settings, "executor", service.executor):
        await service.run(stop)


WORKERS = {"processor": run_processor, "projections": run_projections, "executor": run_executor}
