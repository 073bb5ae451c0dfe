"""Redis stopped while the API serves: no 500s, the rate limiter falls back, health says so."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.provision import redis_server
from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME
from tests.integration.conftest import free_port, login
from tests.integration.harness import eventually


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of this test's own, on a free loopback port."""
    port = free_port()
    home = tmp_path / "redis"
    home.mkdir()
    process = subprocess.Popen(
        redis_server.server_command(home, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while not redis_server.server_ready(port):
            assert time.monotonic() < deadline, "own redis-server did not start"
            time.sleep(0.05)
        yield process, redis_server.url(port)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture
def isolated_env(isolated_env: dict[str, str], own_redis: tuple[subprocess.Popen[bytes], str]) -> dict[str, str]:
    return {**isolated_env, "REDIS_URL": own_redis[1]}


async def test_stopping_redis_mid_test_causes_no_500(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, own_redis: tuple[subprocess.Popen[bytes], str]
) -> None:
    tokens = await login(anonymous, ADMIN_USERNAME, ADMIN_PASSWORD)
    assert (await client.post("/api/v1/ingest", json={"content": "a", "content_type": "text/plain"})).status_code == 201

    process, _ = own_redis
    process.terminate()
    process.wait(timeout=10)

    ingest = await client.post("/api/v1/ingest", json={"content": "b", "content_type": "text/plain"})
    assert ingest.status_code == 201, ingest.text
    assert "ratelimit-remaining" in ingest.headers  # the in-process limiter is counting
    me = await client.get("/api/v1/auth/me")
    assert me.status_code == 200

    async def degraded() -> dict[str, Any] | None:  # /health caches its checks for a second
        health = await anonymous.get("/health")
        assert health.status_code == 200
        body: dict[str, Any] = health.json()
        return body if body["status"] == "degraded" else None

    health = await eventually(degraded, timeout=5, what="/health to say degraded")
    assert health["checks"]["rate_limiter"].startswith("degraded")
    refresh = await anonymous.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refresh.status_code == 503 and refresh.json()["error"]["reason"] == "unavailable"
    relogin = await anonymous.post("/api/v1/auth/login", json={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD})
    assert relogin.status_code == 503
    for _ in range(20):
        response = await client.get("/api/v1/auth/me")
        assert response.status_code < 500, response.text
