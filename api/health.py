"""Liveness and readiness: /health says what works and what does not; /ready whether to send traffic.

/health reports each dependency (PostgreSQL, Kafka, Redis, the change feed, the rate limiter, the blob
store), each worker's progress from its heartbeat (infra.runtime.heartbeat), how many objects name a blob
the store lacks, and how many projection dead letters are unresolved. Overall: "healthy" when all is well;
"degraded" (200) when the API still serves but something is wrong (any of those counts above zero too);
"unhealthy" (503) when it cannot serve: PostgreSQL or Kafka is unreachable. Tests and load balancers
poll it, so every check is bounded by a short timeout and the dependency checks are cached for a second.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency

from api.ratelimit import RateLimiter
from infra.adapters.blob_check import missing_blobs
from infra.adapters.command_bus import MissingTopics
from infra.runtime.bootstrap import ApiContainer
from infra.runtime.heartbeat import describe, heartbeat_path, read_beat
from projections.dead_letters import unresolved_count
from projections.users import admin_exists

CHECK_TIMEOUT = 1.0
CACHE_SECONDS = 1.0
WORKERS = ("processor", "projections", "executor")
BLOB_SCAN_SECONDS = 30.0
BLOB_SCAN_TIMEOUT = 5.0
ESSENTIAL = ("postgres", "kafka")  # without either the API cannot serve a write or a read


def health_controller(health_path: str = "/health") -> type[Controller]:
    """The health routes: liveness at ``health_path`` (``monitoring.health_check_path``) and /ready."""

    class HealthController(Controller):
        tags = ["health"]

        @get(
            health_path,
            operation_id="health",
            summary="Health of the API, its dependencies and the workers",
            opt={"open": True},
        )
        async def health(self, container: NamedDependency[ApiContainer], state: State) -> Response[dict[str, Any]]:
            return await _health(container, state)

        @get("/ready", operation_id="ready", summary="Whether the system can serve requests now")
        async def ready(self, container: NamedDependency[ApiContainer], state: State) -> Response[dict[str, Any]]:
            """Readiness in the HealthStatus shape: ``{"status", "checks": {name: {"status", "latency_ms",
            "detail"?}}, "reasons"}``; 503 while any check fails (README "Health and readiness")."""
            return await _ready(container, state)

    return HealthController


async def _health(container: ApiContainer, state: State) -> Response[dict[str, Any]]:
    checks = await _dependencies(container, state)
    workers = _workers(container)
    serving = all(checks[name] == "ok" for name in ESSENTIAL)
    all_ok = all(v == "ok" for v in checks.values()) and all(w["status"] in ("ok", "unknown") for w in workers.values())
    missing = await _missing_blobs(container, state)
    unresolved = await _projection_dead_letters(container)
    all_ok = all_ok and missing == 0 and unresolved == 0
    status = "healthy" if serving and all_ok else "degraded" if serving else "unhealthy"
    body = {
        "status": status,
        # The spec's DataService.health_check keys: whether its database, storage and cache answer.
        "database": checks["postgres"] == "ok",
        "storage": checks["blob_store"] == "ok",
        "cache": checks["redis"] == "ok",
        "checks": checks,
        "workers": workers,
        # Set aside by policy so that their partitions move on (README "Dead letters"): unresolved
        # projection dead letters (`pipeline dlq`) make the status "degraded" but the system serves.
        "dead_letters": {
            "projections": unresolved,
            "processor_since_start": workers["processor"].get("dead_letters_since_start"),
        },
        # Objects whose content the blob store lacks (`pipeline blobs check` lists them); None: unknown.
        "missing_blobs": missing,
    }
    return Response(body, status_code=200 if serving else 503)


async def _ready(container: ApiContainer, state: State) -> Response[dict[str, Any]]:
    await _dependencies(container, state)
    timed: dict[str, dict[str, Any]] = dict(state.health_timed)
    # The limiter's in-process fallback serves when Redis is away: that is ready, if degraded.
    limiter: RateLimiter = state.limiter
    if timed["redis"]["status"] != "ok" and limiter.degraded:
        timed["redis"] = {**timed["redis"], "status": "ok", "detail": "in-process rate-limit fallback"}
    started = time.perf_counter()
    admin = await _admin_registered(container)
    timed["first_admin"] = _timed("ok" if admin else "error: no admin registered yet", started)
    workers = _workers(container)
    for name, worker in workers.items():
        alive = worker["status"] == "ok"
        timed[f"worker_{name}"] = {"status": "ok" if alive else f"error: {worker['status']}", "latency_ms": 0.0}
    lag = workers["projections"].get("lag")
    limit = container.settings.monitoring.ready_max_projection_lag
    timed["projection_lag"] = {
        "status": "ok" if lag is not None and lag <= limit else f"error: {lag} events behind (limit {limit})",
        "latency_ms": 0.0,
        "detail": {"events": lag, "limit": limit},
    }
    for name in ("change_feed", "rate_limiter"):
        timed.pop(name, None)  # reported by /health; neither stops the system from serving
    reasons = [f"{name}: {check['status']}" for name, check in timed.items() if check["status"] != "ok"]
    body = {"status": "not_ready" if reasons else "ready", "checks": timed, "reasons": reasons}
    return Response(body, status_code=503 if reasons else 200)


async def _dependencies(container: ApiContainer, state: State) -> dict[str, str]:
    """The dependency checks, run at most once per CACHE_SECONDS per API process."""
    cached: tuple[float, dict[str, str]] | None = getattr(state, "health_cache", None)
    if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
        return cached[1]
    limiter: RateLimiter = state.limiter
    postgres, kafka, redis, blobs = await asyncio.gather(
        _check(_postgres(container)),
        _check(container.bus.check_broker(CHECK_TIMEOUT)),
        _check(container.redis.ping()),
        _check(asyncio.to_thread(_writable, container.blobs.root)),
    )
    state.health_timed = {"postgres": postgres, "kafka": kafka, "redis": redis, "blob_store": blobs}
    checks = {
        "postgres": postgres["status"],
        "kafka": kafka["status"],
        "redis": redis["status"],
        "blob_store": blobs["status"],
        "change_feed": "ok" if container.changes.connected else "reconnecting",
        # Still serving without Redis, but each API process then limits on its own.
        "rate_limiter": "degraded: in-process fallback" if limiter.degraded else "ok",
    }
    state.health_cache = (time.monotonic(), checks)
    return checks


def _workers(container: ApiContainer) -> dict[str, dict[str, Any]]:
    """Each worker's state from its heartbeat file ("unknown" when it runs elsewhere)."""
    data_dir = container.settings.storage.data_dir
    stall = container.settings.supervision.stall_seconds
    now = time.time()
    return {name: describe(read_beat(heartbeat_path(data_dir, name)), now, stall) for name in WORKERS}


async def _postgres(container: ApiContainer) -> None:
    async with container.pool.connection(timeout=CHECK_TIMEOUT) as conn:
        await conn.execute("SELECT 1")


async def _projection_dead_letters(container: ApiContainer) -> int | None:
    """Events the projections could not apply, not yet retried or skipped; None if unreadable."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT), container.pool.connection(timeout=CHECK_TIMEOUT) as conn:
            return await unresolved_count(conn)
    except Exception:
        return None


async def _missing_blobs(container: ApiContainer, state: State) -> int | None:
    """How many live objects name a blob the store lacks, rescanned at most every BLOB_SCAN_SECONDS
    (a read of every object's hash and one stat per distinct hash: too much for every /health)."""
    cached: tuple[float, int | None] | None = getattr(state, "blob_scan", None)
    if cached is not None and time.monotonic() - cached[0] < BLOB_SCAN_SECONDS:
        return cached[1]
    try:
        async with asyncio.timeout(BLOB_SCAN_TIMEOUT):
            count: int | None = len(await missing_blobs(container.pool, container.blobs))
    except Exception:
        count = None
    state.blob_scan = (time.monotonic(), count)
    return count


async def _admin_registered(container: ApiContainer) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT), container.pool.connection(timeout=CHECK_TIMEOUT) as conn:
            return await admin_exists(conn)
    except Exception:
        return False


def _writable(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".health-", dir=directory)
    os.close(fd)
    os.unlink(name)


async def _check(awaitable: Any) -> dict[str, Any]:
    """Run one check: ``{"status": "ok" | "error: <what>", "latency_ms"}``."""
    started = time.perf_counter()
    try:
        await asyncio.wait_for(awaitable, CHECK_TIMEOUT + 1.0)
        return _timed("ok", started)
    except Exception as exc:
        # Only our own message is shown: a driver's may name hosts and users, and /ready is open.
        detail = f" ({exc})" if isinstance(exc, MissingTopics) else ""
        return _timed(f"error: {type(exc).__name__}{detail}", started)


def _timed(status: str, started: float) -> dict[str, Any]:
    return {"status": status, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
