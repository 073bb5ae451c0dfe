"""Small defects, each against the real system: an unknown execution status names the statuses, unknown
docs paths answer the JSON 404 envelope, the operator commands give up on a silent PostgreSQL at once,
and the API's read connections are replaced after the pool's max_lifetime.

One system for the module.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from httpx import AsyncClient
from psycopg_pool import AsyncConnectionPool

from infra.adapters.postgres import CONNECT_TIMEOUT_S, connection_kwargs
from infra.adapters.read_connections import ReadConnections
from tests.conftest import environment_for
from tests.integration.harness import ROOT, eventually
from tests.integration.system import RunningSystem, running_system

STATUSES = ["submitted", "running", "completed", "failed", "cancelled"]


@pytest.fixture(scope="module")
async def system(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningSystem]:
    tmp_path: Path = tmp_path_factory.mktemp("polish")
    async with running_system(environment_for(services, tmp_path), tmp_path) as running:
        yield running


@pytest.fixture
def client(system: RunningSystem) -> AsyncClient:
    return system.admin


async def test_an_unknown_execution_status_is_a_400_naming_the_statuses(client: AsyncClient) -> None:
    response = await client.get("/api/v1/executions", params={"status": "bogus"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["reason"] == "validation_error"
    assert error["details"]["field"] == "status" and error["details"]["statuses"] == STATUSES
    assert all(status in error["message"] for status in STATUSES)
    for status in STATUSES:  # each known one still filters
        assert (await client.get("/api/v1/executions", params={"status": status})).status_code == 200


async def test_the_documented_filters_list_their_values(client: AsyncClient) -> None:
    """Any other value is a 400, so the document says which (else a client, or schemathesis, takes any
    string for valid: ``?category=`` was a "schema-valid request rejected")."""
    document = (await client.get("/api/docs/openapi.json")).json()
    categories = (await client.get("/api/v1/nodes/", params={"category": "nope"})).json()["error"]["details"]
    for path, name, values in [
        ("/api/v1/executions", "status", STATUSES),
        ("/api/v1/nodes", "category", categories["categories"]),
    ]:
        parameter = next(p for p in document["paths"][path]["get"]["parameters"] if p["name"] == name)
        assert parameter["schema"] == {"type": "string", "enum": values} and not parameter["required"]


@pytest.mark.parametrize("path", ["/api/docs/nope", "/api/docs/nope.html", "/api/docs/assets/nope.js", "/api/docs/a/b"])
async def test_an_unknown_docs_path_is_the_json_404_envelope(system: RunningSystem, path: str) -> None:
    response = await system.anonymous.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json"), response.text[:200]
    error = response.json()["error"]
    assert error["code"] == 404 and error["reason"] == "not_found"
    assert error["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize("path", ["/api/docs", "/api/docs/", "/api/docs/redoc", "/api/redoc"])
async def test_the_docs_pages_still_answer(system: RunningSystem, path: str) -> None:
    response = await system.anonymous.get(path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert (await system.anonymous.get("/api/docs/openapi.json")).json()["info"]["title"] == "Pipeline API"


@pytest.fixture
def silent_postgres() -> Iterator[str]:
    """A "PostgreSQL" that takes connections (the kernel completes the handshake) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"postgresql://postgres@127.0.0.1:{listener.getsockname()[1]}/postgres"


@pytest.mark.parametrize("command", [["dlq", "list"], ["user", "disable", "someone"]])
async def test_operator_commands_give_up_on_a_silent_postgresql_at_once(
    system: RunningSystem, silent_postgres: str, command: list[str]
) -> None:
    env = {**os.environ, **system.env, "DATABASE_URL": silent_postgres, "PYTHONPATH": str(ROOT)}

    def run() -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "infra.cli", *command]
        return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)

    started = time.monotonic()
    answer = await asyncio.to_thread(run)
    took = time.monotonic() - started
    assert answer.returncode == 1, answer.stderr
    assert "error: cannot reach the system" in answer.stderr and "Traceback" not in answer.stderr
    # The connect timeout, plus the start-up (imports, Kafka topics) of a process on a busy machine.
    assert CONNECT_TIMEOUT_S <= took < CONNECT_TIMEOUT_S + 20, took


async def test_read_connections_are_replaced_after_the_pools_max_lifetime(services: dict[str, str]) -> None:
    pool = AsyncConnectionPool(
        services["DATABASE_URL"],
        min_size=1,
        max_size=2,
        max_lifetime=1.0,
        kwargs=connection_kwargs("public"),
        open=False,
    )
    await pool.open(wait=True)
    reads = ReadConnections(pool, 1, timeout=10)

    async def backend() -> int:
        return int(await reads.read(_backend_pid))

    try:
        first = await backend()
        # Reads go on; once the connection is a second old the read that finds it so gives it back.
        await eventually(lambda: _differs(backend, first), timeout=30, what="a new read connection")
        # and the pool closed the old one: no backend left behind
        await eventually(lambda: _gone(pool, first), timeout=10, what="the old backend gone")
    finally:
        await reads.close()
        await pool.close()


async def _backend_pid(conn: Any) -> int:
    cur = await conn.execute("SELECT pg_backend_pid()")
    row = await cur.fetchone()
    return int(row[0])


async def _differs(backend: Callable[[], Awaitable[int]], first: int) -> bool:
    return await backend() != first


async def _gone(pool: AsyncConnectionPool, pid: int) -> bool:
    async with pool.connection() as conn:  # a transaction of its own: pg_stat_activity as it is now
        cur = await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = await cur.fetchone()
        return row is not None and row[0] == 0
