"""Permissions on every path and at the moment of the effect (issue #7), against one real system.

One set of workers and one API serve the whole module (module-scoped fixtures), with tight login
throttling and slow-client limits so those can be seen quickly.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME, environment_for
from tests.integration.conftest import _api_client, login, until_admin_can_log_in
from tests.integration.harness import Worker, eventually
from tests.integration.users import PASSWORD, client_for, create_user

GQL = "/api/graphql"
BACKOFF_S = 5
STORE_GRAPH = {
    "nodes": [
        {"id": "src", "type": "input", "params": {"name": "text"}},
        {"id": "keep", "type": "store", "params": {"content_type": "text/plain"}},
    ],
    "edges": [{"from": "src.value", "to": "keep.content"}],
}


@pytest.fixture(scope="module")
def env(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {
        **environment_for(services, tmp_path_factory.mktemp("authz")),
        "PIPELINE_RATE_LIMITING_USER_LIMIT": "1000000 per hour",
        "PIPELINE_RATE_LIMITING_DEFAULT_LIMIT": "1000000 per hour",
        "PIPELINE_AUTHENTICATION_LOGIN_MAX_FAILURES_PER_USERNAME": "3",
        "PIPELINE_AUTHENTICATION_LOGIN_MAX_FAILURES_PER_IP": "10",
        "PIPELINE_AUTHENTICATION_LOGIN_BACKOFF_SECONDS": str(BACKOFF_S),
        "PIPELINE_SERVER_HEADER_TIMEOUT_SECONDS": "2",
        "PIPELINE_SERVER_BODY_TIMEOUT_SECONDS": "2",
    }


@pytest.fixture(scope="module")
def workers(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Worker]]:
    logs = tmp_path_factory.mktemp("authz-logs")
    started = {name: Worker(name, env, logs).start() for name in ("processor", "projections", "executor")}
    try:
        yield started
    finally:
        for worker in started.values():
            worker.stop()


@pytest.fixture(scope="module")
async def anonymous(
    env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, workers: dict[str, Worker]
) -> AsyncIterator[httpx.AsyncClient]:
    async with _api_client(env, tmp_path_factory.mktemp("authz-api")) as http:
        await until_admin_can_log_in(http, workers.values())
        yield http


@pytest.fixture(scope="module")
async def admin(anonymous: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    tokens = await login(anonymous, ADMIN_USERNAME, ADMIN_PASSWORD)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with httpx.AsyncClient(base_url=anonymous.base_url, timeout=60, headers=headers) as http:
        yield http


def ws_url(client: httpx.AsyncClient, path: str) -> str:
    token = client.headers["authorization"].split(" ", 1)[1]
    return str(client.base_url).replace("http://", "ws://").rstrip("/") + f"{path}?access_token={token}"


async def gql(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    response = await client.post(GQL, json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def set_user(admin: httpx.AsyncClient, user_id: str, **change: Any) -> None:
    response = await admin.patch(f"/api/v1/users/{user_id}", json=change)
    assert response.status_code == 200, response.text


async def ingest(client: httpx.AsyncClient, content: str) -> str:
    """Ingest and return the id once the read model has it."""
    response = await client.post("/api/v1/ingest", json={"content": content, "content_type": "text/plain"})
    assert response.status_code == 201, response.text
    object_id = str(response.json()["object_id"])
    token = {"X-Consistency-Token": response.json()["position"]}
    assert (await client.get(f"/api/v1/data/{object_id}", headers=token)).status_code == 200
    return object_id


# --- execute on every path -------------------------------------------------------------------------


async def test_a_viewer_cannot_execute_on_any_path(admin: httpx.AsyncClient, anonymous: httpx.AsyncClient) -> None:
    await create_user(admin, "exec-viewer", "viewer")
    async with await client_for(anonymous, "exec-viewer") as viewer:
        rest = await viewer.post("/api/v1/execute", json={"graph": STORE_GRAPH, "inputs": {"text": "x"}})
        assert rest.status_code == 403, rest.text
        assert rest.json()["error"]["reason"] == "forbidden"
        cancel = await viewer.post(f"/api/v1/executions/{uuid.uuid4()}/cancel")
        assert cancel.status_code == 403, cancel.text

        mutation = "mutation($g: JSON!, $i: JSON) { executeGraph(graph: $g, inputs: $i) { executionId } }"
        graphql = await gql(viewer, mutation, g=STORE_GRAPH, i={"text": "x"})
        assert graphql["errors"][0]["extensions"]["code"] == 403, graphql

        async with websockets.connect(ws_url(viewer, "/ws/viewer-1")) as ws:
            await ws.send(json.dumps({"type": "execute", "graph": STORE_GRAPH, "inputs": {"text": "x"}}))
            assert json.loads(await ws.recv())["code"] == "unsupported"

        # Reading stays allowed; nothing was submitted on any path.
        assert (await viewer.get("/api/v1/nodes")).status_code == 200
        assert "errors" not in await gql(viewer, "{ availableNodes }")
        listed = await viewer.get("/api/v1/executions")
        assert listed.status_code == 200 and listed.json()["total"] == 0


async def test_someone_elses_execution_is_not_found_to_read_or_cancel(
    admin: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    for name in ("exec-owner", "exec-other"):
        await create_user(admin, name)
    async with await client_for(anonymous, "exec-owner") as owner, await client_for(anonymous, "exec-other") as other:
        submitted = await owner.post("/api/v1/execute", json={"graph": STORE_GRAPH, "inputs": {"text": "mine"}})
        assert submitted.status_code == 202, submitted.text
        execution_id = submitted.json()["execution_id"]
        unknown = await other.post(f"/api/v1/executions/{uuid.uuid4()}/cancel")
        assert unknown.status_code == 404, unknown.text
        # the same answer as an unknown id: a 403 would tell them it exists
        for response in (
            await other.post(f"/api/v1/executions/{execution_id}/cancel"),
            await other.get(f"/api/v1/executions/{execution_id}"),
        ):
            assert response.status_code == 404, response.text
            assert response.json()["error"]["reason"] == "not_found"


# --- sinks run with the submitter's current rights --------------------------------------------------


async def _finished(admin: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
    """The execution at ``url`` once finished, else None."""
    response = await admin.get(url)
    body = response.json() if response.status_code == 200 else None
    return body if body and body["status"] in {"completed", "failed", "cancelled"} else None


async def test_a_demoted_or_disabled_submitters_graph_cannot_write(
    admin: httpx.AsyncClient, anonymous: httpx.AsyncClient, workers: dict[str, Worker]
) -> None:
    users = {name: await create_user(admin, name) for name in ("sink-kept", "sink-demoted", "sink-disabled")}
    workers["executor"].stop()  # submissions wait for it: rights change between submission and effect
    try:
        submitted = {}
        for name in users:
            async with await client_for(anonymous, name) as user:
                body = {"graph": STORE_GRAPH, "inputs": {"text": f"written by {name}"}}
                response = await user.post("/api/v1/execute", json=body)
                assert response.status_code == 202, response.text
                submitted[name] = response.json()["execution_id"]
        await set_user(admin, users["sink-demoted"]["user_id"], role="viewer")
        await set_user(admin, users["sink-disabled"]["user_id"], disabled=True)
    finally:
        workers["executor"].start()
    done = {}
    for name, execution_id in submitted.items():
        url = f"/api/v1/executions/{execution_id}"
        done[name] = await eventually(partial(_finished, admin, url), timeout=120, what=f"{name}'s execution")
    assert done["sink-kept"]["status"] == "completed", done["sink-kept"]
    assert done["sink-demoted"]["status"] == "failed"
    assert "the viewer role may not write" in " ".join(done["sink-demoted"]["errors"]), done["sink-demoted"]
    assert done["sink-disabled"]["status"] == "failed"
    assert "the disabled role may not write" in " ".join(done["sink-disabled"]["errors"]), done["sink-disabled"]
    for name, execution_id in submitted.items():  # the store node's object id derives from the execution
        object_id = uuid.uuid5(uuid.UUID(execution_id), "keep:store:0")
        check = partial(_found_or_not, admin, f"/api/v1/data/{object_id}", name == "sink-kept")
        found = await eventually(check, timeout=30, what=f"{name}'s stored object to settle")
        assert found == ("yes" if name == "sink-kept" else "no"), name


async def _found_or_not(admin: httpx.AsyncClient, url: str, expect_found: bool) -> str | None:
    status = (await admin.get(url)).status_code
    if status == 200:
        return "yes"
    return "no" if status == 404 and not expect_found else None


async def test_an_admins_graph_reads_as_admin(admin: httpx.AsyncClient, anonymous: httpx.AsyncClient) -> None:
    await create_user(admin, "read-owner")
    async with await client_for(anonymous, "read-owner") as owner:
        object_id = await ingest(owner, "owned by someone else")
    graph = {"nodes": [{"id": "doc", "type": "object", "params": {"object_id": object_id}}], "edges": []}
    response = await admin.post("/api/v1/execute", json={"graph": graph})
    assert response.status_code == 202, response.text
    url = f"/api/v1/executions/{response.json()['execution_id']}"
    done = await eventually(partial(_finished, admin, url), timeout=90, what="the run")
    assert done["status"] == "completed", done


# --- live subscriptions re-check the subscriber -----------------------------------------------------


async def _object_ids_until(ws: Any, wanted: str, graphql: bool = False) -> list[str]:
    """Object ids of the data changes received until ``wanted`` arrives (or 15 s pass), then 1 s more."""
    ids: list[str] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            message = json.loads(await asyncio.wait_for(ws.recv(), 1.0 if wanted in ids else 15))
        except TimeoutError:
            break
        if graphql and message.get("type") == "next":
            ids.append(message["payload"]["data"]["dataChanges"]["objectId"])
        elif not graphql and message.get("type") == "data_change":
            ids.append(message["object_id"])
    return ids


async def test_websocket_subscription_follows_demotion_and_ends_on_disable(
    admin: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    watcher = await create_user(admin, "ws-watcher", "admin")
    await create_user(admin, "ws-other")
    async with await client_for(anonymous, "ws-watcher") as me, await client_for(anonymous, "ws-other") as other:
        async with websockets.connect(ws_url(me, "/ws/watcher")) as ws:
            await ws.send(json.dumps({"type": "subscribe", "topic": "data_changes"}))
            assert json.loads(await ws.recv())["type"] == "subscribed"
            theirs = await ingest(other, "an admin may see this")
            assert theirs in await _object_ids_until(ws, theirs)

            await set_user(admin, watcher["user_id"], role="user")
            hidden = await ingest(other, "a user may not see this")
            mine = await ingest(me, "mine")
            seen = await _object_ids_until(ws, mine)
            assert mine in seen and hidden not in seen, (seen, hidden)

            await set_user(admin, watcher["user_id"], disabled=True)
            disabled_at = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            assert time.monotonic() - disabled_at < 1.0


async def test_graphql_subscription_follows_demotion_and_ends_on_disable(
    admin: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    watcher = await create_user(admin, "gql-watcher", "admin")
    await create_user(admin, "gql-other")
    async with await client_for(anonymous, "gql-watcher") as me, await client_for(anonymous, "gql-other") as other:
        async with websockets.connect(ws_url(me, GQL), subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connection_init"}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            query = 'subscription { dataChanges(filters: {change_type: "Ingested"}) { objectId } }'
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
            # No ack for a subscription: ingest until one arrives (as an admin, others' objects reach us).
            first: dict[str, Any] = {}
            for _ in range(10):
                theirs = await ingest(other, "an admin may see this")
                try:
                    first = json.loads(await asyncio.wait_for(ws.recv(), 3))
                    break
                except TimeoutError:
                    continue
            assert first.get("type") == "next", first

            await set_user(admin, watcher["user_id"], role="user")
            hidden = await ingest(other, "a user may not see this")
            mine = await ingest(me, "mine")
            seen = await _object_ids_until(ws, mine, graphql=True)
            assert mine in seen and hidden not in seen, (seen, hidden, theirs)

            await set_user(admin, watcher["user_id"], disabled=True)
            disabled_at = time.monotonic()
            messages = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    messages.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
            assert time.monotonic() - disabled_at < 1.0
            errors = [m for m in messages if m["type"] == "next" and m["payload"].get("errors")]
            assert errors and errors[0]["payload"]["errors"][0]["extensions"]["code"] == 403, messages


# --- sessions -----------------------------------------------------------------------------------------


async def test_a_password_change_ends_other_sessions_access_tokens(
    admin: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    await create_user(admin, "pw-two-sessions")
    laptop = await login(anonymous, "pw-two-sessions", PASSWORD)
    phone = {"Authorization": f"Bearer {(await login(anonymous, 'pw-two-sessions', PASSWORD))['access_token']}"}
    assert (await anonymous.get("/api/v1/auth/me", headers=phone)).status_code == 200
    change = {"current_password": PASSWORD, "new_password": "another long password"}
    changed = await anonymous.post(
        "/api/v1/auth/password", json=change, headers={"Authorization": f"Bearer {laptop['access_token']}"}
    )
    assert changed.status_code == 200, changed.text
    refused = await anonymous.get("/api/v1/auth/me", headers=phone)
    assert refused.status_code == 401 and refused.json()["error"]["reason"] == "unauthorized"
    fresh = {"Authorization": f"Bearer {changed.json()['access_token']}"}
    assert (await anonymous.get("/api/v1/auth/me", headers=fresh)).status_code == 200


async def _failed_login(http: httpx.AsyncClient, username: str) -> httpx.Response:
    return await http.post("/api/v1/auth/login", json={"username": username, "password": "not the password"})


async def test_failed_logins_lock_a_username_whether_or_not_it_exists(
    admin: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    await create_user(admin, "locky")
    answers: dict[str, list[httpx.Response]] = {"locky": [], "no-such-user-77": []}
    for name, seen in answers.items():
        for _ in range(4):  # three free failures, the fourth locks the name
            seen.append(await _failed_login(anonymous, name))
        seen.append(await anonymous.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD}))
    for name, seen in answers.items():
        assert [r.status_code for r in seen] == [401, 401, 401, 401, 429], name
        locked = seen[-1]
        assert 1 <= int(locked.headers["retry-after"]) <= BACKOFF_S
        assert locked.json()["error"]["reason"] == "rate_limited" and locked.json()["error"]["request_id"]
    # The same answers for a name that exists and one that does not.
    assert answers["locky"][0].json()["error"]["message"] == answers["no-such-user-77"][0].json()["error"]["message"]
    assert answers["locky"][-1].json()["error"]["message"] == answers["no-such-user-77"][-1].json()["error"]["message"]

    async def unlocked() -> bool:
        response = await anonymous.post("/api/v1/auth/login", json={"username": "locky", "password": PASSWORD})
        return response.status_code == 200

    await eventually(unlocked, timeout=BACKOFF_S + 10, what="the lockout to end")


async def test_failed_logins_from_one_ip_lock_that_ip(anonymous: httpx.AsyncClient, admin: httpx.AsyncClient) -> None:
    await create_user(admin, "ip-victim")
    # Another loopback source address, so the other tests' failures from 127.0.0.1 do not count here.
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.3")
    async with httpx.AsyncClient(base_url=anonymous.base_url, transport=transport, timeout=60) as guesser:
        statuses = [(await _failed_login(guesser, f"guess-{i}")).status_code for i in range(11)]
        assert statuses == [401] * 11  # ten free failures; the eleventh locks the address
        right = await guesser.post("/api/v1/auth/login", json={"username": "ip-victim", "password": PASSWORD})
        assert right.status_code == 429 and "retry-after" in right.headers
    # Other addresses are not affected.
    assert (await anonymous.post("/api/v1/auth/login", json={"username": "ip-victim", "password": PASSWORD})).is_success


# --- slow clients ------------------------------------------------------------------------------------


def _send_part_and_stall(base_url: httpx.URL, part: bytes) -> bytes:
    """A slow client: send only ``part`` of a request, then nothing; return all the server answers."""
    with socket.create_connection((base_url.host, base_url.port), timeout=15) as conn:
        conn.sendall(part)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


async def test_slow_request_headers_get_408_and_the_connection_closes(anonymous: httpx.AsyncClient) -> None:
    started = time.monotonic()
    answer = await asyncio.to_thread(_send_part_and_stall, anonymous.base_url, b"GET /health HTTP/1.1\r\nHost: x\r\n")
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["reason"] == "request_timeout"
    assert time.monotonic() - started < 10


def _second_request_stalls(base_url: httpx.URL, pause: float) -> tuple[bytes, float]:
    """One whole request on a kept-alive connection, ``pause`` s later only part of a second; the answers,
    and the seconds from the second request's first byte to the connection's close."""
    with socket.create_connection((base_url.host, base_url.port), timeout=15) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        chunks = [conn.recv(65536)]
        time.sleep(pause)  # the time between requests is what is tested
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        second_began = time.monotonic()
        while chunk := conn.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks), time.monotonic() - second_began


async def test_a_later_request_on_a_kept_alive_connection_has_its_own_header_deadline(
    anonymous: httpx.AsyncClient,
) -> None:
    # The second request begins 1 s after the connection opened: its deadline (2 s) is 1 s after the first
    # request's would have been, and is counted from its own first byte.
    answer, stalled = await asyncio.to_thread(_second_request_stalls, anonymous.base_url, 1.0)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert b"HTTP/1.1 408" in answer, answer
    assert 1.8 < stalled < 6, stalled


async def test_a_slow_request_body_gets_408_with_the_envelope(anonymous: httpx.AsyncClient) -> None:
    body = json.dumps({"username": "slow-body", "password": "whatever it is"}).encode()
    head = (
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    answer = await asyncio.to_thread(_send_part_and_stall, anonymous.base_url, head + body[:5])
    assert answer.startswith(b"HTTP/1.1 408"), answer
    envelope = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert envelope["reason"] == "request_timeout" and envelope["request_id"]
