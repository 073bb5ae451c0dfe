"""Liveness and readiness: /health answers with the state of each dependency."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Controller, Response, get
from litestar.datastructures import State

from api.ratelimit import RateLimiter
from infra.bootstrap import ApiContainer


class HealthController(Controller):
    tags = ["health"]

    @get("/health", operation_id="health", summary="Health of the API and its dependencies")
    async def health(self, container: ApiContainer, state: State) -> Response[dict[str, Any]]:
        limiter: RateLimiter = state.limiter
        checks = {
            "postgres": await _check(_postgres(container)),
            "redis": await _check(container.redis.ping()),
            "change_feed": "ok" if container.changes.connected else "reconnecting",
            # Still serving without Redis, but each API process then limits on its own.
            "rate_limiter": "degraded: in-process fallback" if limiter.degraded else "ok",
        }
        healthy = checks["postgres"] == "ok"
        ok = healthy and all(v == "ok" for v in checks.values())
        body = {"status": "healthy" if ok else "degraded", "checks": checks}
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
