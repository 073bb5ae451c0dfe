"""The second hardening sweep: what real clients, schemathesis and fault injection found, one test each.

One system (workers, API) serves the whole module. Each test names the request that showed the defect.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
import websockets

from domain.inbox import inbox_id
from infra.runtime.settings import Settings, load_settings
from projections.changes import feed_application_name
from tests.conftest import environment_for
from tests.integration.harness import eventually, ws_ask
from tests.integration.system import RunningSystem, running_system
from tests.integration.users import (
    PASSWORD,
    assert_envelope,
    clients_with_roles,
    create_user,
    ingest_readable,
    token_of,
    ws_base,
)

GQL = "/api/graphql"
STATEMENT_TIMEOUT_MS = 1500


@pytest.fixture(scope="module")
async def system(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningSystem]:
    tmp = tmp_path_factory.mktemp("hardening-2")
    env = {
        **environment_for(services, tmp),
        "PIPELINE_RATE_LIMITING_ENABLED": "false",
        "PIPELINE_DATABASE_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS),
    }
    async with running_system(env, tmp) as running:
        yield running


@pytest.fixture(scope="module")
def settings(system: RunningSystem) -> Settings:
    return load_settings(environ=system.env)


@pytest.fixture(scope="module")
async def users(system: RunningSystem) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """alice and bob (users) and vera (a viewer), each a client with their token."""
    async with clients_with_roles(
        system.admin, system.anonymous, {"alice": "user", "bob": "user", "vera": "viewer"}
    ) as clients:
        yield clients


def graphql_error(message: dict[str, Any]) -> dict[str, Any]:
    """The first error of a graphql-transport-ws message: an ``error``, or a ``next`` whose result has
    errors (what an error raised inside a running subscription becomes)."""
    payload = message["payload"]
    errors = payload if message["type"] == "error" else payload.get("errors")
    assert errors, message
    return dict(errors[0])


async def ingest(client: httpx.AsyncClient, content: str = "hardening") -> tuple[str, str]:
    return await ingest_readable(client, content)


def ws_url(client: httpx.AsyncClient, name: str = "hardening") -> str:
    return f"{ws_base(client)}/ws/{name}-{uuid.uuid4().hex[:6]}?access_token={token_of(client)}"


# --- HTTP semantics -------------------------------------------------------------------------------


async def test_head_answers_wherever_get_does(system: RunningSystem) -> None:
    """Found: ``HEAD /api/v1/data/{id}`` (and every GET route) answered 405."""
    object_id, _ = await ingest(system.admin)
    get = await system.admin.get(f"/api/v1/data/{object_id}")
    head = await system.admin.head(f"/api/v1/data/{object_id}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["etag"] == get.headers["etag"] and head.headers["x-request-id"]
    assert (await system.anonymous.head("/health")).status_code in (200, 503)
    missing = await system.admin.head(f"/api/v1/data/{uuid.uuid4()}")
    assert missing.status_code == 404 and missing.content == b""
    # A stream's HEAD ends with its headers instead of streaming.
    started = time.monotonic()
    stream = await system.admin.head("/api/v1/events/stream", params={"after": "now"})
    assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
    assert time.monotonic() - started < 10
    options = await system.admin.options(f"/api/v1/data/{object_id}")
    assert "HEAD" in options.headers["allow"] and "GET" in options.headers["allow"]
    # Still alive: a normal request afterwards.
    assert (await system.admin.get(f"/api/v1/data/{object_id}")).status_code == 200


async def test_a_json_body_declared_as_another_media_type_is_415(system: RunningSystem) -> None:
    """Found: ``POST /api/v1/ingest`` with ``Content-Type: text/plain`` and a JSON body was accepted (201)."""
    body = json.dumps({"content": "x", "content_type": "text/plain"})
    for media in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        response = await system.admin.post("/api/v1/ingest", content=body, headers={"Content-Type": media})
        error = assert_envelope(response, 415)
        assert error["reason"] == "unsupported_media_type" and error["details"]["field"] == "Content-Type"
    login = await system.anonymous.post(
        "/api/v1/auth/login", content=b'{"username": "a", "password": "b"}', headers={"Content-Type": "text/plain"}
    )
    assert_envelope(login, 415)
    # JSON with parameters, a +json type and no Content-Type at all are JSON.
    for headers in (
        {"Content-Type": "application/json; charset=utf-8"},
        {"Content-Type": "application/vnd.x+json"},
        {},
    ):
        response = await system.admin.post("/api/v1/ingest", content=body, headers=headers)
        assert response.status_code == 201, (headers, response.text)


async def test_parameter_errors_name_the_field(system: RunningSystem) -> None:
    """Found: ``GET /api/v1/search?query=x&limit=abc`` answered details as a bare list, without ``field``."""
    cases = [
        ("/api/v1/search", {"query": "x", "limit": "abc"}, "limit"),
        ("/api/v1/search", {"query": "a" * 600}, "query"),  # the parameter's name, not the handler's argument
        ("/api/v1/executions", {"status": "weird"}, "status"),
        ("/api/v1/notifications", {"limit": "-1"}, "limit"),
        ("/api/v1/events/stream", {"aggregate_id": "nope"}, "aggregate_id"),
    ]
    for path, params, field in cases:
        error = assert_envelope(await system.admin.get(path, params=params), 400)
        assert error["reason"] == "validation_error" and error["details"]["field"] == field, (path, error)
    unknown = await system.admin.post("/api/v1/ingest", json={"content": "x", "content_type": "text/plain", "zzz": 1})
    assert assert_envelope(unknown, 400)["details"]["field"] == "zzz"


# --- other users' objects -------------------------------------------------------------------------


async def test_an_event_stream_of_someone_elses_aggregate_is_404(
    system: RunningSystem, users: dict[str, httpx.AsyncClient]
) -> None:
    """Found: ``GET /api/v1/events/stream?aggregate_id=<bob's object>`` as alice answered an empty 200."""
    alice, bob = users["alice"], users["bob"]
    bobs, _ = await ingest(bob, "bob's")
    for aggregate in (bobs, str(uuid.uuid4())):
        sse = await alice.get("/api/v1/events/stream", params={"aggregate_id": aggregate})
        assert assert_envelope(sse, 404)["details"]["field"] == "aggregate_id"
        async with websockets.connect(ws_url(alice)) as ws:
            reply = await ws_ask(ws, {"type": "subscribe", "topic": "events", "aggregate_id": aggregate})
            assert reply["type"] == "error" and reply["code"] == "not_found", reply
        document = "subscription($a: String) { events(aggregateId: $a) { __typename } }"
        async with websockets.connect(
            f"{ws_base(alice)}{GQL}", subprotocols=[websockets.Subprotocol("graphql-transport-ws")]
        ) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {"authToken": token_of(alice)}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            payload = {"query": document, "variables": {"a": aggregate}}
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
            answer = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert graphql_error(answer)["extensions"]["code"] == 404, answer
    # Their own object's stream works, even subscribed right after the write, and admins see any.
    mine = await alice.post("/api/v1/ingest", json={"content": "mine", "content_type": "text/plain"})
    own = mine.json()["object_id"]
    for client in (alice, system.admin):
        async with client.stream("GET", "/api/v1/events/stream", params={"aggregate_id": own}) as response:
            assert response.status_code == 200
            async with asyncio.timeout(30):
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        assert json.loads(line[5:])["aggregate_id"] == own
                        break


async def test_a_chat_cannot_take_another_aggregates_id(
    system: RunningSystem, users: dict[str, httpx.AsyncClient]
) -> None:
    """Found: ``mutation { chat(content: "hi", conversationId: "<inbox_id(bob)>") }`` as alice started a
    conversation with bob's inbox id, after which bob's ``POST /api/v1/notifications/read`` was 404 forever
    (the same for a username's future user id: its registration would have been refused)."""
    alice, bob = users["alice"], users["bob"]
    bob_id = (await bob.get("/api/v1/auth/me")).json()["user_id"]
    taken = str(inbox_id(bob_id))
    mutation = 'mutation($c: String) { chat(content: "hi", conversationId: $c) { conversationId } }'
    answer = (await alice.post(GQL, json={"query": mutation, "variables": {"c": taken}})).json()
    assert answer["errors"][0]["extensions"]["code"] == 404, answer
    async with websockets.connect(ws_url(alice)) as ws:
        fresh = str(uuid.uuid4())
        reply = await ws_ask(ws, {"type": "chat_message", "content": "hi", "conversation_id": fresh})
        assert reply == {"type": "error", "code": "not_found", "message": f"conversation {fresh} does not exist"}
        # Without an id a conversation starts, and its id continues it.
        started = await ws_ask(ws, {"type": "chat_message", "content": "hi"})
        assert started["type"] == "chat_response", started
        conversation = started["data"]["conversation_id"]
        again = await ws_ask(ws, {"type": "chat_message", "content": "more", "conversation_id": conversation})
        assert again["type"] == "chat_response" and again["data"]["conversation_id"] == conversation
    assert (await bob.post("/api/v1/notifications/read", json={})).status_code == 200


# --- PostgreSQL: slow statements and a lost LISTEN connection ---------------------------------------


async def test_a_slow_query_answers_503_within_the_statement_timeout(system: RunningSystem, settings: Settings) -> None:
    """Found: no statement timeout on the API's pool; a read blocked by a lock held its connection forever."""
    object_id, _ = await ingest(system.admin)
    async with await psycopg.AsyncConnection.connect(
        settings.database.url, options=f"-c search_path={settings.database.schema}"
    ) as blocker:
        await blocker.execute("LOCK TABLE data_objects IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        response = await system.admin.get(f"/api/v1/data/{object_id}")
        took = time.monotonic() - started
        await blocker.rollback()
    error = assert_envelope(response, 503)
    assert error["reason"] == "query_timeout" and response.headers["retry-after"]
    assert STATEMENT_TIMEOUT_MS / 1000 <= took < 20
    assert (await system.admin.get(f"/api/v1/data/{object_id}")).status_code == 200


async def test_live_clients_are_told_when_the_change_feed_reconnected(
    system: RunningSystem, settings: Settings, users: dict[str, httpx.AsyncClient]
) -> None:
    """Found: when the API's LISTEN connection dropped, changes committed meanwhile were never
    delivered and live subscribers were not told: ``/ws`` gets ``resync``, GraphQL ``dataChanges`` ends
    with a 503 ``resync`` error, and the event stream (read by position) loses nothing."""
    alice = users["alice"]
    async with websockets.connect(ws_url(alice)) as ws:
        assert (await ws_ask(ws, {"type": "subscribe", "topic": "data_changes"}))["type"] == "subscribed"
        async with websockets.connect(
            f"{ws_base(alice)}{GQL}", subprotocols=[websockets.Subprotocol("graphql-transport-ws")]
        ) as gql:
            await gql.send(json.dumps({"type": "connection_init", "payload": {"authToken": token_of(alice)}}))
            assert json.loads(await gql.recv())["type"] == "connection_ack"
            payload = {"query": "subscription { dataChanges { objectId } }"}
            await gql.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
            # Both are live once a change reaches them.
            before, _ = await ingest(alice, "before the reconnection")
            async with asyncio.timeout(60):
                while json.loads(await ws.recv()).get("object_id") != before:
                    pass
                assert json.loads(await gql.recv())["payload"]["data"]["dataChanges"]["objectId"] == before

            async def listen_backends() -> list[Any]:
                """Terminate this system's LISTEN connection (its channel names the schema)."""
                async with await psycopg.AsyncConnection.connect(settings.database.url, autocommit=True) as conn:
                    cur = await conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                        (feed_application_name(settings.database.schema),),
                    )
                    return await cur.fetchall()

            assert await eventually(listen_backends, what="the API's LISTEN connection")
            async with asyncio.timeout(60):
                while (message := json.loads(await ws.recv()))["type"] != "resync":
                    pass
            assert "data_changes" in message["topics"]
            async with asyncio.timeout(60):
                while (answer := json.loads(await gql.recv()))["type"] == "next" and not answer["payload"].get(
                    "errors"
                ):
                    pass
            assert graphql_error(answer)["extensions"]["reason"] == "resync", answer
        # The feed is back: a new change reaches the same connection.
        object_id, _ = await ingest(alice, "after the reconnection")
        async with asyncio.timeout(60):
            while (change := json.loads(await ws.recv())).get("object_id") != object_id:
                pass
        assert change["type"] == "data_change"


# --- numbers the parsers choke on ------------------------------------------------------------------


async def test_digits_that_int_refuses_are_4xx(system: RunningSystem) -> None:
    """Found, each a 500: ``DELETE /api/v1/data/{id}`` with ``If-Match: ²`` (byte 0xB2, which
    str.isdigit() admits and int() refuses); ``GET .../content`` with ``Range: bytes=<5000 digits>-``
    (int() refuses over 4300 digits); ``POST /api/graphql`` with a 5000-digit integer in ``variables``."""
    object_id, position = await ingest(system.admin, "digits")
    url = f"/api/v1/data/{object_id}"
    for value in (b"\xb2", b"1" * 19):
        request = system.admin.build_request("DELETE", url, headers=[(b"If-Match", value)])
        error = assert_envelope(await system.admin.send(request), 400)
        assert error["reason"] == "invalid_header"
    huge = "9" * 5000
    token = {"X-Consistency-Token": position}
    past = await system.admin.get(f"{url}/content", headers={**token, "Range": f"bytes={huge}-"})
    assert_envelope(past, 416)
    for whole in (f"bytes=0-{huge}", f"bytes=-{huge}"):
        response = await system.admin.get(f"{url}/content", headers={**token, "Range": whole})
        assert response.status_code == 206 and response.content == b"digits", response.text
    mutation = 'mutation($m: JSON) { ingestData(content: "x", contentType: "text/plain", metadata: $m) { objectId } }'
    body = '{"query": ' + json.dumps(mutation) + ', "variables": {"m": {"a": ' + huge + "}}}"
    graphql = await system.admin.post(GQL, content=body, headers={"Content-Type": "application/json"})
    assert_envelope(graphql, 400)
    rest = await system.admin.post(
        "/api/v1/ingest",
        content='{"content": "x", "content_type": "text/plain", "metadata": {"a": ' + huge + "}}",
        headers={"Content-Type": "application/json"},
    )
    assert assert_envelope(rest, 400)["reason"] == "validation_error"
    # The same over graphql-transport-ws closes the connection as an invalid message (4400), not 4500.
    async with websockets.connect(
        f"{ws_base(system.admin)}{GQL}", subprotocols=[websockets.Subprotocol("graphql-transport-ws")]
    ) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authToken": token_of(system.admin)}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send('{"id": "1", "type": "subscribe", "payload": {"query": "{ __typename }", "x": ' + huge + "}}")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
    assert (await system.admin.get(url)).status_code == 200


async def test_a_logout_ends_the_live_connections_its_token_opened(system: RunningSystem) -> None:
    """Found: after ``POST /api/v1/auth/logout`` (which revokes the bearer access token) a ``/ws``
    connection opened with that token went on answering (``ping`` -> ``pong``) and receiving changes."""
    name = f"leaver-{uuid.uuid4().hex[:6]}"
    await create_user(system.admin, name)
    tokens = (await system.anonymous.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})).json()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    url = f"{ws_base(system.admin)}/ws/leaver?access_token={tokens['access_token']}"
    async with websockets.connect(url) as ws, websockets.connect(url) as quiet:
        assert (await ws_ask(ws, {"type": "ping"}))["type"] == "pong"
        assert (await ws_ask(quiet, {"type": "subscribe", "topic": "data_changes"}))["type"] == "subscribed"
        logout = await system.anonymous.post(
            "/api/v1/auth/logout", headers=headers, json={"refresh_token": tokens["refresh_token"]}
        )
        assert logout.status_code == 204, logout.text
        await ws.send(json.dumps({"type": "ping"}))  # the next message is refused: closed with 1008
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        # The other connection, sending nothing, is closed at its next delivery.
        await ingest(system.admin, "after the logout")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(30):
                while True:
                    await quiet.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
