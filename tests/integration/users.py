"""Helpers for tests that need several users: create them as the admin, log them in, reach the live API."""

from __future__ import annotations

import httpx

from tests.integration.conftest import login

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
