"""The metrics route (families: infra.runtime.metrics; HTTP requests are counted by api/middleware.py)."""

from __future__ import annotations

import asyncio
import logging

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infra.runtime.bootstrap import ApiContainer
from infra.runtime.metrics import (
    EXECUTIONS,
    PROJECTION_DEAD_LETTERS,
    REGISTRY,
    WorkerCollector,
)
from projections.dead_letters import unresolved_count

log = logging.getLogger("pipeline.metrics")
READ_MODEL_TIMEOUT = 1.0


def metrics_route(path: str) -> HTTPRouteHandler:
    """GET ``path`` (``monitoring.metrics_path``): the Prometheus text format, without a token."""

    @get(path, opt={"open": True}, include_in_schema=False)
    async def metrics(container: NamedDependency[ApiContainer]) -> Response[bytes]:
        await observe_read_models(container)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return metrics


def register_worker_collector(data_dir: str) -> None:
    """Show the workers' heartbeat counters in this process's registry (once per process)."""
    global _worker_collector
    if _worker_collector is not None:
        REGISTRY.unregister(_worker_collector)
    _worker_collector = WorkerCollector(data_dir)
    REGISTRY.register(_worker_collector)


_worker_collector: WorkerCollector | None = None


async def observe_read_models(container: ApiContainer) -> None:
    """Refresh the gauges that come from PostgreSQL: executions by status, projection dead letters."""
    try:
        async with (
            asyncio.timeout(READ_MODEL_TIMEOUT),
            container.pool.connection(timeout=READ_MODEL_TIMEOUT) as conn,
        ):
            cur = await conn.execute("SELECT status, count(*) FROM executions GROUP BY status")
            rows = await cur.fetchall()
            EXECUTIONS.clear()  # a status no execution has any more must not keep its last count
            for status, count in rows:
                EXECUTIONS.labels(status).set(count)
            PROJECTION_DEAD_LETTERS.set(await unresolved_count(conn))
    except Exception as exc:  # a scrape still shows the in-process families while PostgreSQL is away
        log.debug("read-model gauges not refreshed: %s", exc)
