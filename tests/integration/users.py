"""Helpers for tests that need several users: create them as the admin, log them in, reach the live API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.conftest import environment_for
from tests.integration.conftest import login
from tests.integration.system import RunningSystem, running_system

PASSWORD = "a long enough password"


async def create_user(admin: httpx.AsyncClient, username: str, role: str = "user") -> dict:
    response = await admin.post("/api/v1/users", json={"username": username, "password": PASSWORD, "role": role})
    assert response.status_code == 201, response.text
    return response.json()


async def client_for(anonymous: httpx.AsyncClient, username: str) -> httpx.AsyncClient:
    """A client with this user's bearer token (close it after use)."""
    tokens = await login(anonymous, username, PASSWORD)
    return httpx.AsyncClient(
        base_url=anonymous.base_url, timeout=60, headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )


def token_of(client: httpx.AsyncClient) -> str:
    """The bearer token a client sends."""
    return str(client.headers["authorization"]).split(" ", 1)[1]


def ws_base(client: httpx.AsyncClient) -> str:
    """The client's base URL for WebSockets (ws://...)."""
    return str(client.base_url).replace("http://", "ws://").rstrip("/")


async def ingest_readable(client: httpx.AsyncClient, content: str) -> tuple[str, str]:
    """Ingest text as this client; (object id, position) once the read model has it."""
    response = await client.post("/api/v1/ingest", json={"content": content, "content_type": "text/plain"})
    assert response.status_code == 201, response.text
    created = response.json()
    token = {"X-Consistency-Token": created["position"]}
    read = await client.get(f"/api/v1/data/{created['object_id']}", headers=token)
    assert read.status_code == 200, read.text
    return str(created["object_id"]), str(created["position"])


@asynccontextmanager
async def clients_with_roles(
    admin: httpx.AsyncClient, anonymous: httpx.AsyncClient, roles: dict[str, str]
) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """A new user per name of ``roles`` (name -> role, with a random suffix), each a client with their token."""
    suffix = uuid.uuid4().hex[:6]
    clients: dict[str, httpx.AsyncClient] = {}
    try:
        for name, role in roles.items():
            await create_user(admin, f"{name}-{suffix}", role)
            clients[name] = await client_for(anonymous, f"{name}-{suffix}")
        yield clients
    finally:
        for client in clients.values():
            await client.aclose()


def assert_envelope(response: httpx.Response, status: int) -> dict[str, Any]:
    """The error envelope of a response that must have ``status``."""
    assert response.status_code == status, response.text[:500]
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == status and error["request_id"] == response.headers["x-request-id"]
    assert {"reason", "message", "details"} <= set(error)
    return error


def system_with_alice_and_vera(name: str, settings: dict[str, str] | None = None) -> tuple[Any, Any]:
    """A module's ``system`` (one running system, the rate limiter off, ``settings`` as environment
    variables on top) and ``users`` fixtures: alice (a user) and vera (a viewer), each a client with their
    token. Assign them to those names in the module."""

    @pytest.fixture(scope="module")
    async def system(
        services: dict[str, str], tmp_path_factory: pytest.TempPathFactory
    ) -> AsyncIterator[RunningSystem]:
        tmp = tmp_path_factory.mktemp(name)
        env = {**environment_for(services, tmp), "PIPELINE_RATE_LIMITING_ENABLED": "false", **(settings or {})}
        async with running_system(env, tmp) as running:
            yield running

    @pytest.fixture(scope="module")
    async def users(system: RunningSystem) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
        async with clients_with_roles(system.admin, system.anonymous, {"alice": "user", "vera": "viewer"}) as clients:
            yield clients

    return system, users
