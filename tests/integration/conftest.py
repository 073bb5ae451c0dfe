from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME
from tests.integration.harness import START_TIMEOUT_S, Worker, eventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def workers(isolated_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, Worker]]:
    """The command processor, the projection runner and the graph executor, as real processes."""
    started = {
        name: Worker(name, isolated_env, tmp_path / "logs").start() for name in ("processor", "projections", "executor")
    }
    try:
        yield started
    finally:
        for worker in started.values():
            worker.stop()


async def login(http: httpx.AsyncClient, username: str, password: str) -> dict[str, Any]:
    """Log in; the token response."""
    response = await http.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


@pytest.fixture
async def anonymous(
    isolated_env: dict[str, str], tmp_path: Path, workers: dict[str, Worker]
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client without a token against the real server (uvicorn in its own process) on a free port.

    It returns once the first-start admin (from the test environment) can log in.
    """
    async with _api_client(isolated_env, tmp_path) as http:
        await until_admin_can_log_in(http, workers.values())
        yield http


async def until_admin_can_log_in(http: httpx.AsyncClient, workers: Iterable[Worker]) -> None:
    """Wait until the first-start admin can log in (the users projection has them); see START_TIMEOUT_S."""

    async def admin_ready() -> bool:
        for worker in workers:
            worker.check_alive()
        body = {"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD}
        return (await http.post("/api/v1/auth/login", json=body)).status_code == 200

    await eventually(admin_ready, timeout=START_TIMEOUT_S, what="the first-start admin to be able to log in")


@pytest.fixture
async def client(anonymous: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    """The API as the first-start admin: a client that sends the admin's bearer token."""
    tokens = await login(anonymous, ADMIN_USERNAME, ADMIN_PASSWORD)
    async with httpx.AsyncClient(
        base_url=anonymous.base_url, timeout=60, headers={"Authorization": f"Bearer {tokens['access_token']}"}
    ) as http:
        yield http


@asynccontextmanager
async def _api_client(env: dict[str, str], tmp_path: Path, name: str = "api") -> AsyncIterator[httpx.AsyncClient]:
    port = free_port()
    api = Worker("api", {**env, "PIPELINE_PORT": str(port)}, tmp_path / "logs", log_name=name).start()
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:

        async def healthy() -> bool:
            api.check_alive()
            try:
                return (await http.get("/health")).status_code == 200
            except httpx.TransportError:
                return False

        try:
            await eventually(healthy, timeout=START_TIMEOUT_S, what="the API to answer /health")
            yield http
        finally:
            api.stop()
