from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.harness import Worker, eventually


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


@pytest.fixture
async def client(
    isolated_env: dict[str, str], tmp_path: Path, workers: dict[str, Worker]
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client against the real server (uvicorn in its own process) on a free port."""
    port = free_port()
    api = Worker("api", {**isolated_env, "PIPELINE_PORT": str(port)}, tmp_path / "logs").start()
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:

        async def healthy() -> bool:
            if api.process is not None and api.process.poll() is not None:
                raise AssertionError(f"the API exited:\n{api.log()[-3000:]}")
            try:
                return (await http.get("/health")).status_code == 200
            except httpx.TransportError:
                return False

        try:
            await eventually(healthy, timeout=60, what="the API to answer /health")
            yield http
        finally:
            api.stop()
