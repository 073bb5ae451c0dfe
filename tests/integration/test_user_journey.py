"""A new user with the README in hand, against the session's running system: what it says works as written.

The README's "First requests" shell session is run literally (only its address and the admin's name and
password are those of this system); each GET row of its API table is answered; refused WebSocket
handshakes say why; the operator commands give their documented exit status and progress.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import websockets

from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME
from tests.integration.harness import ROOT
from tests.integration.users import token_of, ws_base

pytestmark = pytest.mark.shared_system  # the session's system; every test uses data of its own

README = (ROOT / "README.md").read_text()


def first_requests() -> str:
    """The shell block of the README's "First requests"."""
    section = README.split("### First requests", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "the README's First requests has a sh block"
    return block.group(1)


async def run(command: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    def go() -> subprocess.CompletedProcess[str]:
        merged = {**os.environ, **env}
        return subprocess.run(command, env=merged, cwd=cwd, capture_output=True, text=True, timeout=180)

    return await asyncio.to_thread(go)


async def pipeline(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await run([sys.executable, "-m", "infra.cli", *args], env)


async def test_the_readmes_first_requests_run_as_written(client: httpx.AsyncClient, tmp_path: Path) -> None:
    script = first_requests()
    api = str(client.base_url).rstrip("/")
    script, swapped = re.subn(r"^API=\S+$", f"API={api}", script, count=1, flags=re.MULTILINE)
    assert swapped == 1, "the session starts with API=..."
    script, swapped = re.subn(
        r"^USERNAME=\S+ PASSWORD=.*$",
        f"USERNAME={ADMIN_USERNAME} PASSWORD='{ADMIN_PASSWORD}'",
        script,
        count=1,
        flags=re.M,
    )
    assert swapped == 1, "the session sets USERNAME= and PASSWORD= on one line"
    (tmp_path / "session.sh").write_text(script)
    done = await run(["bash", "-euo", "pipefail", "session.sh"], {}, cwd=tmp_path)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    object_id = json.loads((tmp_path / "ingest.json").read_text())["object_id"]
    assert done.stdout.count(object_id) >= 4, done.stdout  # ingested, read, annotated, found
    assert '"label":"animal"' in done.stdout  # the search result carries the annotation made before it
    assert '"reason":"validation_error"' in done.stdout and '"field":"content_type"' in done.stdout


async def test_every_get_row_of_the_api_table_is_answered(client: httpx.AsyncClient) -> None:
    api = README.split("\n## API\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([A-Z/]+) \| `([^`?{]+)(?:\?[^`]*)?` \|", api, re.MULTILINE)
    paths = [path for methods, path in rows if "GET" in methods.split("/") and path != "/api/v1/events/stream"]
    assert {"/api/v1/nodes", "/api/v1/executions", "/health", "/metrics"} <= set(paths)
    for path in paths:
        answer = await client.get(path)
        assert (answer.status_code not in (404, 405) and answer.status_code < 500) or path == "/ready", (
            f"GET {path}: {answer.status_code} {answer.text[:200]}"
        )


async def test_an_unknown_node_category_names_the_categories(client: httpx.AsyncClient) -> None:
    answer = await client.get("/api/v1/nodes", params={"category": "transforms"})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["reason"] == "validation_error" and error["details"]["field"] == "category"
    assert "text" in error["details"]["categories"]
    assert (await client.get("/api/v1/nodes", params={"category": "text"})).json()  # a real one still lists
    query = '{ availableNodes(category: "transforms") }'
    graphql = (await client.post("/api/graphql", json={"query": query})).json()
    assert graphql["errors"][0]["extensions"]["code"] == 400, graphql
    assert graphql["errors"][0]["extensions"]["details"]["field"] == "category"


async def test_a_refused_websocket_handshake_says_why(client: httpx.AsyncClient) -> None:
    base = ws_base(client)
    refusals = [
        (f"{base}/ws/journey", {}, 401, "unauthorized"),
        (f"{base}/ws/journey", {"Authorization": "Bearer forged"}, 401, "unauthorized"),
        (f"{base}/ws/{'x' * 129}", {"Authorization": f"Bearer {token_of(client)}"}, 400, "validation_error"),
    ]
    for url, headers, status, reason in refusals:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, additional_headers=headers):
                pass
        response = refused.value.response
        assert response.status_code == status, (url, response.status_code)
        error = json.loads(bytes(response.body or b""))["error"]
        assert error["code"] == status and error["reason"] == reason and error["request_id"]
        assert response.headers["X-Request-ID"] == error["request_id"]


async def test_operator_commands_report_progress_and_exit_as_documented(isolated_env: dict[str, str]) -> None:
    system_env = isolated_env  # the session system's environment (tests/integration/conftest.py)
    check = await pipeline(system_env, "blobs", "check")
    assert check.returncode == 0, check.stderr
    assert re.search(r"^blobs check: \d+/\d+ blobs \(100\.0%\)", check.stderr, re.MULTILINE), check.stderr
    nobody = f"nobody-{uuid.uuid4().hex[:8]}"
    refused = await pipeline(system_env, "user", "set-role", nobody, "admin")
    assert refused.returncode == 1 and refused.stderr.strip() == f"error: no user named {nobody!r}", refused.stderr
    unknown = await pipeline(system_env, "dlq", "skip", "999999999")
    assert unknown.returncode == 1 and unknown.stderr.startswith("error: "), unknown.stderr
    usage = await pipeline(system_env, "projections", "rebuild", "--only", "everything")
    assert usage.returncode == 2 and "the read models:" in usage.stderr, usage.stderr
    for done in (check, refused, unknown, usage):
        assert "Traceback" not in done.stderr and "aiokafka" not in done.stderr
