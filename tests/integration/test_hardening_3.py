"""The third hardening sweep: what an independent tester's clients found, one test each.

One system (workers, API) serves the whole module. Each test names the request that showed the defect.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
import websockets

from api.ws_expiry import MESSAGE
from infra.runtime.settings import load_settings
from tests.integration.harness import eventually, ws_ask
from tests.integration.system import RunningSystem
from tests.integration.users import (
    assert_envelope,
    client_for,
    create_user,
    ingest_readable,
    system_with_alice_and_vera,
    token_of,
    ws_base,
)

GQL = "/api/graphql"


system, users = system_with_alice_and_vera("hardening-3")


async def short_lived_token(system: RunningSystem, client: httpx.AsyncClient, seconds: float) -> str:
    """A valid access token of ``client``'s user that expires in ``seconds`` (signed as the API signs them)."""
    me = (await client.get("/api/v1/auth/me")).json()
    settings = load_settings(environ=system.env)
    now = int(time.time())
    claims = {"sub": me["user_id"], "role": me["role"], "iat": now, "exp": now + seconds, "jti": uuid.uuid4().hex}
    return jwt.encode({**claims, "gen": 0}, settings.authentication.secret_key, algorithm="HS256")


async def until_closed(ws: Any, seconds: float) -> tuple[list[str], websockets.ConnectionClosed]:
    """What the server sent until it closed the connection, and how it closed it (fails after ``seconds``)."""
    received: list[str] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                received.append(await ws.recv())
    except websockets.ConnectionClosed as closed:
        return received, closed
    except TimeoutError:
        pass
    raise AssertionError(f"still open after {seconds} s; received {received}")


# --- live connections and their tokens -------------------------------------------------------------


async def test_a_websocket_closes_when_its_token_expires(
    system: RunningSystem, users: dict[str, httpx.AsyncClient]
) -> None:
    """Found: a ``/ws`` (or GraphQL) connection opened with a token stayed open and kept delivering after
    the token expired; only a logout, a password change or disabling the user ended it."""
    alice = users["alice"]
    token = await short_lived_token(system, alice, 3)
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(f"{ws_base(alice)}/ws/expiring", additional_headers=headers) as ws:
        assert (await ws_ask(ws, {"type": "subscribe", "topic": "data_changes"}))["type"] == "subscribed"
        started = time.monotonic()
        told, closed = await until_closed(ws, 20)  # idle: no message of the client's makes the server look
        assert 1 < time.monotonic() - started < 15
    assert closed.rcvd is not None and closed.rcvd.code == 1008 and "expired" in closed.rcvd.reason, closed
    assert json.loads(told[-1]) == {"type": "error", "code": "token_expired", "message": MESSAGE}, told

    token = await short_lived_token(system, alice, 3)
    url = f"{ws_base(alice)}{GQL}"
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as gql_ws:  # type: ignore[list-item]
        await gql_ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}))
        assert json.loads(await gql_ws.recv())["type"] == "connection_ack"
        query = "subscription { dataChanges { objectId } }"
        await gql_ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
        _, gql_closed = await until_closed(gql_ws, 20)
    assert gql_closed.rcvd is not None and gql_closed.rcvd.code == 4401, gql_closed
    # A fresh token works as before.
    async with websockets.connect(f"{ws_base(alice)}/ws/fresh?access_token={token_of(alice)}") as ws:
        assert (await ws_ask(ws, {"type": "ping"}))["type"] == "pong"


# --- limits on what an answer lists -----------------------------------------------------------------


async def test_a_graph_of_thousands_of_invalid_nodes_lists_a_bounded_number_of_problems(
    users: dict[str, httpx.AsyncClient],
) -> None:
    """Found: ``POST /api/v1/execute`` of 5,000 nodes of an unknown type answered listing 5,001 problems."""
    graph = {"nodes": [{"id": f"n{i}", "type": "teleport"} for i in range(5000)], "edges": []}
    response = await users["alice"].post("/api/v1/execute", json={"graph": graph, "inputs": {}})
    error = assert_envelope(response, 400)
    details = error["details"]
    assert len(details["problems"]) == 100, len(details["problems"])
    assert details["total_problems"] == 5001 and details["more_problems"] == 4901
    assert "5001 problems" in error["message"] and "first 100" in error["message"]
    # GraphQL's executeGraph is capped the same way.
    mutation = "mutation($g: JSON!) { executeGraph(graph: $g) { executionId } }"
    answered = await users["alice"].post(GQL, json={"query": mutation, "variables": {"g": graph}})
    extensions = answered.json()["errors"][0]["extensions"]
    assert extensions["code"] == 400 and len(extensions["details"]["problems"]) == 100, str(extensions)[:300]


# --- messages that say what is wrong ----------------------------------------------------------------


async def test_a_search_filter_with_an_out_of_range_number_says_so(users: dict[str, httpx.AsyncClient]) -> None:
    """Found: ``GET /api/v1/search?filters={"metadata": {"a": 1e400}}`` said "filters must be a JSON object"."""
    alice = users["alice"]
    for filters in ('{"metadata": {"a": 1e400}}', "1e400"):
        response = await alice.get("/api/v1/search", params={"query": "x", "filters": filters})
        error = assert_envelope(response, 400)
        assert "out of range" in error["message"] and error["details"]["field"] == "filters", error
    malformed = await alice.get("/api/v1/search", params={"query": "x", "filters": '{"a": '})
    error = assert_envelope(malformed, 400)
    assert "filters is not valid JSON" in error["message"], error
    not_object = await alice.get("/api/v1/search", params={"query": "x", "filters": "[1]"})
    assert "must be a JSON object" in assert_envelope(not_object, 400)["message"]


# --- roles ------------------------------------------------------------------------------------------


async def test_a_viewer_cannot_chat_on_any_path(system: RunningSystem, users: dict[str, httpx.AsyncClient]) -> None:
    """Found: a viewer's GraphQL ``chat`` and ``/ws`` ``chat_message`` were answered, appending a conversation's
    events: a write, which the spec's RBAC (viewer: READ only) does not grant."""
    vera = users["vera"]
    mutation = "mutation($c: String!) { chat(content: $c) { conversationId } }"
    answered = await vera.post(GQL, json={"query": mutation, "variables": {"c": "what is a quokka?"}})
    body = answered.json()
    assert body["data"] is None and body["errors"][0]["extensions"]["code"] == 403, body
    async with websockets.connect(f"{ws_base(vera)}/ws/viewer-chat?access_token={token_of(vera)}") as ws:
        reply = await ws_ask(ws, {"type": "chat_message", "content": "what is a quokka?"})
        assert reply["type"] == "error" and reply["code"] == "forbidden", reply
        assert (await ws_ask(ws, {"type": "ping"}))["type"] == "pong"  # the connection stays open
    me = (await vera.get("/api/v1/auth/me")).json()
    events = await system.admin.get("/api/v1/audit", params={"actor": me["user_id"], "aggregate_type": "Conversation"})
    assert events.status_code == 200 and events.json()["events"] == [], events.text[:300]
    # Users still chat.
    async with websockets.connect(
        f"{ws_base(users['alice'])}/ws/user-chat?access_token={token_of(users['alice'])}"
    ) as ws:
        reply = await ws_ask(ws, {"type": "chat_message", "content": "/help"})
        assert reply["type"] == "chat_response", reply


async def test_an_upload_metadata_part_says_what_is_wrong(users: dict[str, httpx.AsyncClient]) -> None:
    """Found: ``POST /api/v1/upload`` with a ``metadata`` part of ``1e400``, ``{`` or ``[[[...`` said only
    "metadata must be a JSON object"."""
    cases = {
        '{"a": 1e400}': "out of range",
        "{": "metadata is not valid JSON",
        "[" * 5000 + "]" * 5000: "nested too deeply",
        "[1]": "must be a JSON object",
    }
    for metadata, says in cases.items():
        files = [("files", ("a.txt", b"hello", "text/plain"))]
        response = await users["alice"].post("/api/v1/upload", files=files, data={"metadata": metadata})
        error = assert_envelope(response, 400)
        assert says in error["message"] and error["details"]["field"] == "metadata", (metadata[:20], error)


async def test_a_request_the_http_parser_refuses_gets_the_error_envelope(system: RunningSystem) -> None:
    """Found: a header with a control character (``X-Request-ID: \\x7f``) was answered by uvicorn's plain
    text "Invalid HTTP request received.", not the error envelope."""
    url = httpx.URL(str(system.anonymous.base_url))
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-ID: a\x7fb\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)  # the server closes the connection after answering
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), raw[:200]
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == 400 and error["reason"] == "invalid_request", error


async def test_event_streams_count_against_the_per_user_connection_cap(
    system: RunningSystem, users: dict[str, httpx.AsyncClient]
) -> None:
    """Found: one user opened 40 ``GET /api/v1/events/stream`` at once (each with its own live buffer of up to
    ``event_stream.buffer_bytes``), twice ``websocket.max_connections_per_user``; WebSockets stop at 20."""
    limit = load_settings(environ=system.env).websocket.max_connections_per_user
    alice = users["alice"]
    streams: list[httpx.Response] = []
    try:
        for _ in range(limit):
            request = alice.build_request("GET", "/api/v1/events/stream", params={"after": "now"})
            streams.append(await alice.send(request, stream=True))
        assert [s.status_code for s in streams] == [200] * limit
        refused = await alice.get("/api/v1/events/stream", params={"after": "now"})
        assert assert_envelope(refused, 429)["reason"] == "too_many_connections"
        # and the cap is shared with WebSockets: the next one is refused too
        with pytest.raises((websockets.InvalidStatus, websockets.ConnectionClosed)):
            async with websockets.connect(f"{ws_base(alice)}/ws/over-cap?access_token={token_of(alice)}") as ws:
                await ws.recv()
    finally:
        for stream in streams:
            await stream.aclose()
    # Closed streams give their slots back, and a HEAD (which never starts its stream) holds none after it.
    await eventually(lambda: _stream_opens(alice), timeout=30, what="a slot given back")
    for _ in range(limit):
        assert (await alice.head("/api/v1/events/stream", params={"after": "now"})).status_code == 200
    assert await _stream_opens(alice)


async def _stream_opens(client: httpx.AsyncClient) -> bool:
    """Does a new event stream open (200) now? It is closed at once."""
    request = client.build_request("GET", "/api/v1/events/stream", params={"after": "now"})
    response = await client.send(request, stream=True)
    await response.aclose()
    return response.status_code == 200


async def test_a_head_of_the_event_stream_frees_its_connection_at_once(users: dict[str, httpx.AsyncClient]) -> None:
    """Found: after ``HEAD /api/v1/events/stream`` the stream went on (unseen) until its first keep-alive,
    so the next request on the same kept-alive connection waited ``event_stream.keepalive_seconds`` (15 s)."""
    alice = users["alice"]
    started = time.monotonic()
    for _ in range(3):  # one client: the requests share its kept-alive connection
        head = await alice.head("/api/v1/events/stream", params={"after": "now"})
        assert head.status_code == 200 and head.content == b""
    assert (await alice.get("/api/v1/auth/me")).status_code == 200
    assert time.monotonic() - started < 10


async def test_graphql_event_subscriptions_count_against_the_per_user_connection_cap(system: RunningSystem) -> None:
    """Found: one graphql-transport-ws connection ran 100 ``events`` subscriptions (strawberry's cap per
    connection), each with a live buffer of up to ``event_stream.buffer_bytes`` (8 MiB), 20 such connections
    per user: the per-user cap bounded connections, not the streams in them."""
    limit = load_settings(environ=system.env).websocket.max_connections_per_user
    name = f"gina-{uuid.uuid4().hex[:6]}"
    await create_user(system.admin, name)
    async with await client_for(system.anonymous, name) as gina:
        async with websockets.connect(f"{ws_base(gina)}{GQL}", subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connection_init", "payload": {"authToken": token_of(gina)}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            query = 'subscription { events(afterPosition: "now") { __typename } }'
            for index in range(limit):  # the connection holds one slot: limit - 1 streams fit beside it
                await ws.send(json.dumps({"id": str(index), "type": "subscribe", "payload": {"query": query}}))
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))  # one of them (they start concurrently)
            error = message["payload"][0] if message["type"] == "error" else message["payload"]["errors"][0]
            assert error["extensions"]["code"] == 429 and error["extensions"]["reason"] == "too_many_connections"
            running = "1" if message["id"] == "0" else "0"
            await ws.send(json.dumps({"id": running, "type": "complete"}))  # ending one gives its slot back
            again = await _subscribe_when_a_slot_is_free(ws, query)
            await ingest_readable(gina, "an event for every stream of gina's")
            while True:  # the new subscription delivers it, as the others do
                reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if reply["id"] in (message["id"], running):  # the ``complete`` of the refused or ended one
                    continue
                assert reply["type"] == "next" and "errors" not in reply["payload"], reply
                if reply["id"] == again:
                    break


async def _subscribe_when_a_slot_is_free(ws: Any, query: str) -> str:
    """Subscribe until one is not refused (a slot is given back when its stream's task has ended); its id."""
    for attempt in range(50):
        operation = f"again-{attempt}"
        await ws.send(json.dumps({"id": operation, "type": "subscribe", "payload": {"query": query}}))
        try:
            async with asyncio.timeout(2):  # a refusal comes at once; a running "now" stream says nothing
                while json.loads(await ws.recv())["id"] != operation:
                    pass
        except TimeoutError:
            return operation
        await ws.recv()  # its complete
    raise AssertionError("no slot was given back")


async def test_an_unknown_ws_message_type_is_not_echoed_whole(users: dict[str, httpx.AsyncClient]) -> None:
    """Found: ``{"type": "xxxx..."}`` (up to ``websocket.max_message_size``, 1 MiB) came back whole in the error."""
    alice = users["alice"]
    async with websockets.connect(f"{ws_base(alice)}/ws/long-type?access_token={token_of(alice)}") as ws:
        reply = await ws_ask(ws, {"type": "x" * 100_000})
        assert reply["code"] == "unsupported" and len(reply["message"]) < 200, len(reply["message"])
