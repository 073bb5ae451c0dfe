"""Liveness and readiness: /health answers with the state of each dependency."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Controller, Response, get

from infra.bootstrap import ApiContainer


class HealthController(Controller):
    tags = ["health"]

    @get("/health", operation_id="health", summary="Health of the API and its dependencies")
    async def health(self, container: ApiContainer) -> Response[dict[str, Any]]:
        checks = {
            "postgres": await _check(_postgres(container)),
            "redis": await _check(container.redis.ping()),
            "change_feed": "ok" if container.changes.connected else "reconnecting",
        }
        healthy = checks["postgres"] == "ok"
        body = {"status": "healthy" if healthy else "degraded", "checks": checks}
        return Response(body, status_code=200 if healthy else 503)


async def _postgres(container: ApiContainer) -> None:
    async with container.pool.connection() as conn:
        await conn.execute("SELECT 1")


async def _check(awaitable: Any) -> str:
    try:
        await asyncio.wait_for(awaitable, 2.0)
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
