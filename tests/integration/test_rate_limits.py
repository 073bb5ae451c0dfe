"""Rate limits in the real Redis: exact limits, the RateLimit-* headers, the ingest burst, several API processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from api.ratelimit import RateLimiter
from infra.runtime.settings import RateLimitingSettings
from tests.conftest import environment_for
from tests.integration.conftest import _api_client
from tests.integration.system import RunningSystem, running_system
from tests.integration.users import client_for, create_user

BODY = {"content": "limited", "content_type": "text/plain"}


LIMITS = {
    "PIPELINE_RATE_LIMITING_VIEWER_LIMIT": "5 per hour",
    "PIPELINE_RATE_LIMITING_BURST_LIMIT": "3 per minute",
    "PIPELINE_RATE_LIMITING_DEFAULT_LIMIT": "500 per hour",
}
# The tests so marked share one system (their own users); the one that spends the client IP's
# unauthenticated quota has its own, since every later login from that IP would be refused.
shared = pytest.mark.shared_system


@pytest.fixture
def isolated_env(isolated_env: dict[str, str]) -> dict[str, str]:
    return {**isolated_env, **LIMITS}


@pytest.fixture(scope="module")
async def system(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningSystem]:
    tmp_path = tmp_path_factory.mktemp("rate-limits")
    async with running_system({**environment_for(services, tmp_path), **LIMITS}, tmp_path) as running:
        yield running


def assert_limited(response: httpx.Response, limit: int) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["reason"] == "rate_limited"
    assert response.headers["ratelimit-limit"] == str(limit)
    assert response.headers["ratelimit-remaining"] == "0"
    assert 0 < int(response.headers["retry-after"]) <= 3600
    assert 0 < int(response.headers["ratelimit-reset"]) <= 3600


@shared
async def test_a_role_limit_is_reached_exactly_at_its_number(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    await create_user(client, "limited-viewer", "viewer")
    async with await client_for(anonymous, "limited-viewer") as viewer:
        for expected_remaining in (4, 3, 2, 1, 0):
            response = await viewer.get("/api/v1/auth/me")
            assert response.status_code == 200, response.text
            assert response.headers["ratelimit-limit"] == "5"
            assert response.headers["ratelimit-remaining"] == str(expected_remaining)
            assert response.json()["rate_limit"]["remaining"] == expected_remaining
        assert_limited(await viewer.get("/api/v1/auth/me"), 5)


@shared
async def test_ingest_has_its_own_per_minute_burst_limit(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    await create_user(client, "bursty")
    async with await client_for(anonymous, "bursty") as user:
        for _ in range(3):
            assert (await user.post("/api/v1/ingest", json=BODY)).status_code == 201
        refused = await user.post("/api/v1/ingest", json=BODY)
        assert_limited(refused, 3)
        assert int(refused.headers["retry-after"]) <= 60
        assert (await user.get("/api/v1/auth/me")).status_code == 200  # other routes are not in the burst


async def test_unauthenticated_requests_are_limited_per_client_ip(anonymous: httpx.AsyncClient) -> None:
    first = await anonymous.post("/api/v1/auth/refresh", json={"refresh_token": "x.y"})
    assert first.status_code == 401 and first.headers["ratelimit-limit"] == "500"
    left = int(first.headers["ratelimit-remaining"])
    for _ in range(left):
        assert (await anonymous.post("/api/v1/auth/refresh", json={"refresh_token": "x.y"})).status_code == 401
    assert_limited(await anonymous.post("/api/v1/auth/login", json={"username": "a", "password": "b"}), 500)


@shared
async def test_two_api_processes_share_one_limit(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, isolated_env: dict[str, str], tmp_path: Path
) -> None:
    await create_user(client, "shared-viewer", "viewer")
    async with (
        await client_for(anonymous, "shared-viewer") as first,
        _api_client(isolated_env, tmp_path, "api2") as raw,
    ):
        second = httpx.AsyncClient(base_url=raw.base_url, headers=dict(first.headers), timeout=60)
        async with second:
            statuses = [(await (first if i % 2 else second).get("/api/v1/auth/me")).status_code for i in range(5)]
            assert statuses == [200] * 5
            assert_limited(await first.get("/api/v1/auth/me"), 5)
            assert_limited(await second.get("/api/v1/auth/me"), 5)


@pytest.mark.parametrize("enabled", [True, False])
async def test_a_veto_key_refuses_uncounted_in_the_same_round_trip(services: dict[str, str], enabled: bool) -> None:
    """The auth middleware's logout check rides on the limiter's round trip: an existing veto key
    refuses the request without counting it, with limiting on or off; without it, counting goes on."""
    redis = aioredis.from_url(services["REDIS_URL"])
    prefix = f"t{uuid.uuid4().hex[:12]}"
    limiter = RateLimiter(RateLimitingSettings(enabled=enabled, viewer_limit="3 per hour"), redis, prefix)
    veto = f"{prefix}:revoked:some-token"
    try:
        assert (await limiter.hit("viewer", "u1", veto=veto)).allowed
        await redis.set(veto, 1, ex=60)
        for _ in range(5):  # refused, and not counted: the user's quota is untouched
            refused = await limiter.hit("viewer", "u1", veto=veto)
            assert refused.vetoed and not refused.allowed
        await redis.delete(veto)
        second = await limiter.hit("viewer", "u1", veto=veto)
        assert second.allowed and not second.vetoed
        assert second.remaining == (1 if enabled else 3)
    finally:
        await redis.aclose()


async def test_the_hits_of_one_loop_turn_share_one_round_trip_and_count_exactly(services: dict[str, str]) -> None:
    """Concurrent requests are counted by one script call (api/ratelimit.py ``_Batch``), each as if alone:
    exactly the limit is let through, each verdict has its own remaining count, a vetoed hit counts nothing."""
    redis = aioredis.from_url(services["REDIS_URL"])
    prefix = f"t{uuid.uuid4().hex[:12]}"
    limiter = RateLimiter(RateLimitingSettings(viewer_limit="3 per hour", burst_limit="100 per minute"), redis, prefix)
    veto = f"{prefix}:revoked:some-token"
    try:
        await redis.set(veto, 1, ex=60)
        await limiter.hit("viewer", "warm-up")  # loads the script: later calls are one EVALSHA each

        async def script_calls() -> int:
            stats = await redis.info("commandstats")
            return sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))

        before = await script_calls()
        verdicts = await asyncio.gather(
            *(limiter.hit("viewer", "u1", burst=True) for _ in range(8)),
            limiter.hit("viewer", "u2", veto=veto),
            limiter.hit("viewer", "u3"),
        )
        assert await script_calls() - before == 1  # INFO itself is not a script call
        counted = verdicts[:8]
        assert sum(v.allowed for v in counted) == 3
        assert [v.remaining for v in counted] == [2, 1, 0, 0, 0, 0, 0, 0]  # in the order they were made
        assert verdicts[8].vetoed and not verdicts[8].allowed
        assert verdicts[9].allowed and verdicts[9].remaining == 2
        assert (await limiter.hit("viewer", "u2")).remaining == 2  # the vetoed hit counted nothing
    finally:
        await redis.aclose()
