"""`pipeline user ...` against the real services: what an operator creates, the API honours."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest

from tests.integration.conftest import login
from tests.integration.harness import ROOT

pytestmark = pytest.mark.shared_system  # the session's system (its user is its own)


async def pipeline(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "infra.cli", *args],
            input=stdin,
            env={**os.environ, **env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return await asyncio.to_thread(run)


async def test_operator_creates_demotes_and_disables_a_user(
    anonymous: httpx.AsyncClient, isolated_env: dict[str, str]
) -> None:
    password = "operator chosen password"
    created = await pipeline(
        isolated_env, "user", "create", "ops-made", "--role", "admin", "--password-stdin", stdin=password + "\n"
    )
    assert created.returncode == 0, created.stderr
    assert password not in created.stdout + created.stderr
    tokens = await login(anonymous, "ops-made", password)
    me = await anonymous.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.json()["role"] == "admin"

    again = await pipeline(isolated_env, "user", "create", "OPS-made", "--password-stdin", stdin=password + "\n")
    assert again.returncode == 1 and "taken" in again.stderr

    assert (await pipeline(isolated_env, "user", "set-role", "ops-made", "viewer")).returncode == 0
    me = await anonymous.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.json()["role"] == "viewer"

    assert (await pipeline(isolated_env, "user", "disable", "ops-made")).returncode == 0
    me = await anonymous.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 401
    missing = await pipeline(isolated_env, "user", "disable", "nobody-at-all")
    assert missing.returncode == 1
