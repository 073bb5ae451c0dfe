"""One running system (workers and API as real processes) shared by the tests of a module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME
from tests.integration.conftest import _api_client, login, until_admin_can_log_in
from tests.integration.harness import Worker


@dataclass(frozen=True)
class RunningSystem:
    env: dict[str, str]
    anonymous: httpx.AsyncClient  # no token
    admin: httpx.AsyncClient  # the first-start admin's bearer token
    logs: Path  # each process's log: api.log, processor.log, ...
    workers: dict[str, Worker]  # processor, projections, executor (a test may kill and start one again)


@asynccontextmanager
async def running_system(env: dict[str, str], tmp_path: Path) -> AsyncIterator[RunningSystem]:
    """Start the processor, projections, executor and the API; yield once the admin can log in."""
    workers = {name: Worker(name, env, tmp_path / "logs").start() for name in ("processor", "projections", "executor")}
    try:
        async with _api_client(env, tmp_path) as anonymous:
            await until_admin_can_log_in(anonymous, workers.values())
            tokens = await login(anonymous, ADMIN_USERNAME, ADMIN_PASSWORD)
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            async with httpx.AsyncClient(base_url=anonymous.base_url, timeout=60, headers=headers) as admin:
                yield RunningSystem(env, anonymous, admin, tmp_path / "logs", workers)
    finally:
        for worker in workers.values():
            worker.stop()
