"""`pipeline run` end to end: the supervisor starts the API and workers, serves, stops on Ctrl-C, restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME
from tests.integration.conftest import free_port
from tests.integration.harness import ROOT, eventually


def start_system(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "run"],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def wait_healthy(http: httpx.AsyncClient, system: subprocess.Popen[bytes], log: Path) -> None:
    async def healthy() -> bool:
        if system.poll() is not None:
            raise AssertionError(f"pipeline run exited:\n{log.read_text()[-3000:]}")
        try:
            return (await http.get("/health")).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(healthy, timeout=90, what="pipeline run to serve /health")


async def _login(http: httpx.AsyncClient, credentials: dict[str, str]) -> dict[str, str] | None:
    response = await http.post("/api/v1/auth/login", json=credentials)
    return dict(response.json()) if response.status_code == 200 else None


def alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def stop_with_ctrl_c(system: subprocess.Popen[bytes]) -> None:
    system.send_signal(signal.SIGINT)
    assert system.wait(timeout=60) == 0


@pytest.mark.slow
async def test_run_serves_stops_cleanly_and_finds_its_data_again(isolated_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    env = {**isolated_env, "PIPELINE_PORT": str(port)}
    log = tmp_path / "run.log"
    data_dir = Path(isolated_env["PIPELINE_DATA_DIR"])
    system = start_system(env, log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            await wait_healthy(http, system, log)
            runtime = json.loads((data_dir / "runtime.json").read_text())
            assert set(runtime["pids"]) == {"api", "processor", "projections", "executor"}
            credentials = {"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD}
            login = await eventually(lambda: _login(http, credentials), timeout=60, what="the first admin to log in")
            http.headers["Authorization"] = f"Bearer {login['access_token']}"
            created = (await http.post("/api/v1/ingest", json={"content": "kept", "content_type": "text/plain"})).json()
            token = {"X-Consistency-Token": created["position"]}
            assert (await http.get(f"/api/v1/data/{created['object_id']}", headers=token)).status_code == 200
            stop_with_ctrl_c(system)
            assert not [pid for pid in runtime["pids"].values() if alive(pid)], "children outlived pipeline run"
            assert not (data_dir / "runtime.json").exists()

            system = start_system(env, log)
            await wait_healthy(http, system, log)
            again = await http.get(f"/api/v1/data/{created['object_id']}")
            assert again.status_code == 200, again.text
            content = await http.get(f"/api/v1/data/{created['object_id']}/content")
            assert content.status_code == 200 and content.content == b"kept"  # small: kept in its event
    finally:
        if system.poll() is None:
            stop_with_ctrl_c(system)
    assert "Ctrl-C stops everything" in log.read_text()
