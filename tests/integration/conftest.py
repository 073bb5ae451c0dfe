"""A system per test, or one shared by many.

A test that asks for ``client``, ``anonymous``, ``workers`` or ``settings`` gets a system of its own
(workers and API started for it: 10-40 s on CI's two cores). In a module marked
``pytestmark = pytest.mark.shared_system`` they come from the ``system`` fixture instead: the module's
own when it defines one (other settings, one system for the module), else the one below, shared by
all such modules for the whole session. Tests there must not depend on other tests' data (their own
usernames, words, idempotency keys) or on an otherwise empty system, and must leave it usable (a
worker a test kills, it starts again).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from infra.runtime.settings import Settings, load_settings
from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME, environment_for
from tests.integration.harness import START_TIMEOUT_S, Worker, eventually

if TYPE_CHECKING:
    from tests.integration.system import RunningSystem

SHARED_SYSTEM = "shared_system"  # the marker


def shared_system(request: pytest.FixtureRequest) -> RunningSystem | None:
    """The system a test marked shared_system uses (``system``, or with scope="module" ``module_system``);
    None for a test not so marked."""
    marker = request.node.get_closest_marker(SHARED_SYSTEM)
    if marker is None:
        return None
    system: RunningSystem = request.getfixturevalue(
        "module_system" if marker.kwargs.get("scope") == "module" else "system"
    )
    return system


@pytest.fixture(scope="session")
async def system(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningSystem]:
    """One running system with the tests' default settings, for every module marked shared_system that
    does not define a ``system`` of its own: started when the first of them needs it."""
    async with _default_system(services, tmp_path_factory.mktemp("shared-system")) as running:
        yield running


@pytest.fixture(scope="module")
async def module_system(
    services: dict[str, str], tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[RunningSystem]:
    """The same for one module only (``pytest.mark.shared_system(scope="module")``), for tests that change
    the system beyond their own data (swap its read models, say)."""
    tmp_path = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    async with _default_system(services, tmp_path) as running:
        yield running


@asynccontextmanager
async def _default_system(services: dict[str, str], tmp_path: Path) -> AsyncIterator[RunningSystem]:
    from tests.integration.system import running_system  # it imports this module

    async with running_system(environment_for(services, tmp_path), tmp_path) as running:
        yield running


@pytest.fixture
def isolated_env(isolated_env: dict[str, str], request: pytest.FixtureRequest) -> dict[str, str]:
    """The test's own environment (tests/conftest.py), or the shared system's."""
    shared = shared_system(request)
    return shared.env if shared is not None else isolated_env


@pytest.fixture
def settings(isolated_env: dict[str, str]) -> Settings:
    return load_settings(environ=isolated_env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def workers(
    isolated_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[dict[str, Worker]]:
    """The command processor, the projection runner and the graph executor, as real processes."""
    shared = shared_system(request)
    if shared is not None:
        yield shared.workers
        return
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
def anonymous(request: pytest.FixtureRequest) -> httpx.AsyncClient:
    """An HTTP client without a token against the real server (uvicorn in its own process) on a free port.

    It returns once the first-start admin (from the test environment) can log in.
    """
    shared = shared_system(request)
    own: httpx.AsyncClient = shared.anonymous if shared is not None else request.getfixturevalue("own_anonymous")
    return own


@pytest.fixture
async def own_anonymous(
    isolated_env: dict[str, str], tmp_path: Path, workers: dict[str, Worker]
) -> AsyncIterator[httpx.AsyncClient]:
    """``anonymous`` for a test with a system of its own."""
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
def client(request: pytest.FixtureRequest) -> httpx.AsyncClient:
    """The API as the first-start admin: a client that sends the admin's bearer token."""
    shared = shared_system(request)
    own: httpx.AsyncClient = shared.admin if shared is not None else request.getfixturevalue("own_client")
    return own


@pytest.fixture
async def own_client(anonymous: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    """``client`` for a test with a system of its own."""
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
