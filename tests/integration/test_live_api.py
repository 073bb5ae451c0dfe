"""The live API as off-the-shelf clients use it: gql's WebsocketsTransport authenticating by the
connection_init payload, the spec's dataChanges contract, and subscribing right after a submit.
One system serves the whole module."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import pytest
import websockets
from gql import Client, GraphQLRequest, gql
from gql.transport.websockets import WebsocketsTransport

from tests.conftest import environment_for
from tests.integration.harness import eventually
from tests.integration.system import RunningSystem, running_system
from tests.integration.users import client_for, create_user, token_of, ws_base

GQL = "/api/graphql"
GRAPH = {
    "nodes": [{"id": "in", "type": "input", "params": {"name": "text"}}, {"id": "count", "type": "word_count"}],
    "edges": [{"from": "in.value", "to": "count.text"}],
}
CONNECTION_CAP = 4
MESSAGE_LIMIT = 50
PING_S = 2
FINISHED_EVENTS = {"Completed", "Failed", "Cancelled"}
SPEC_FIELDS = (
    "objectId objectType contentHash storageLocation metadata createdAt"
    " annotations { annotationId annotatorId annotationType content confidence createdAt } changeType version"
)


@pytest.fixture(scope="module")
async def system(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningSystem]:
    tmp_path = tmp_path_factory.mktemp("live-api")
    env = {
        **environment_for(services, tmp_path),
        "PIPELINE_WEBSOCKET_MAX_CONNECTIONS_PER_USER": str(CONNECTION_CAP),
        "PIPELINE_WEBSOCKET_MESSAGE_LIMIT": f"{MESSAGE_LIMIT} per minute",
        "PIPELINE_WEBSOCKET_PING_INTERVAL": str(PING_S),
        "PIPELINE_WEBSOCKET_PING_TIMEOUT": str(PING_S),
    }
    async with running_system(env, tmp_path) as running:
        yield running


async def ingest(client: httpx.AsyncClient, content: str, metadata: dict[str, Any]) -> str:
    body = {"content": content, "content_type": "text/plain", "metadata": metadata}
    response = await client.post("/api/v1/ingest", json=body)
    assert response.status_code in (200, 201), response.text
    return str(response.json()["object_id"])


async def test_gql_websockets_transport_with_init_payload_receives_the_spec_data_object(
    system: RunningSystem,
) -> None:
    tag = uuid.uuid4().hex
    transport = WebsocketsTransport(
        url=ws_base(system.admin) + GQL, init_payload={"Authorization": f"Bearer {token_of(system.admin)}"}
    )
    document = gql(f"subscription($f: JSON) {{ dataChanges(filters: $f) {{ {SPEC_FIELDS} }} }}")
    received: list[dict[str, Any]] = []
    async with Client(transport=transport) as session:

        async def listen() -> None:
            filters = {"metadata": {"tag": tag}, "change_type": "INGESTED"}
            async for result in session.subscribe(GraphQLRequest(document, variable_values={"f": filters})):
                received.append(result["dataChanges"])
                return

        listener = asyncio.create_task(listen())
        # The subscription registers shortly after the subscribe message, with no ack: ingest until one arrives.
        created = [await ingest(system.admin, "not for this subscriber", {"tag": "other"})]
        for attempt in range(20):
            created.append(await ingest(system.admin, f"spec object {attempt}", {"tag": tag}))
            done, _ = await asyncio.wait({listener}, timeout=2)
            if done:
                break
        listener.cancel()
    assert received, "no data change arrived over gql's WebsocketsTransport"
    change = received[0]
    assert change["objectId"] in created[1:] and change["metadata"] == {"tag": tag}
    assert change["changeType"] == "INGESTED" and change["version"] == 1
    assert change["objectType"] and change["contentHash"] and change["storageLocation"] and change["createdAt"]
    assert change["annotations"] == []


async def test_a_deletion_delivers_the_last_state_with_changetype_deleted(system: RunningSystem) -> None:
    tag = uuid.uuid4().hex
    transport = WebsocketsTransport(
        url=ws_base(system.admin) + GQL, init_payload={"headers": {"Authorization": f"Bearer {token_of(system.admin)}"}}
    )
    document = gql(f"subscription($f: JSON) {{ dataChanges(filters: $f) {{ {SPEC_FIELDS} }} }}")
    seen: list[dict[str, Any]] = []
    async with Client(transport=transport) as session:

        async def listen() -> None:
            request = GraphQLRequest(document, variable_values={"f": {"metadata": {"tag": tag}}})
            async for result in session.subscribe(request):
                seen.append(result["dataChanges"])

        listener = asyncio.create_task(listen())
        object_id = ""
        for attempt in range(20):  # until the subscription is live
            object_id = await ingest(system.admin, f"doomed {attempt}", {"tag": tag})
            await asyncio.sleep(0)
            try:
                await eventually(partial(_has, seen, object_id, "INGESTED"), timeout=2, what="the ingest")
                break
            except AssertionError:
                continue
        deleted = await system.admin.delete(f"/api/v1/data/{object_id}")
        assert deleted.status_code in (200, 202, 204), deleted.text
        await eventually(partial(_has, seen, object_id, "DELETED"), timeout=30, what="the deletion")
        listener.cancel()
    last = next(c for c in seen if c["objectId"] == object_id and c["changeType"] == "DELETED")
    assert last["metadata"] == {"tag": tag} and last["contentHash"] and last["version"] == 2


async def _has(seen: list[dict[str, Any]], object_id: str, change_type: str) -> bool:
    return any(c["objectId"] == object_id and c["changeType"] == change_type for c in seen)


@pytest.mark.parametrize("shape", ["Authorization", "headers", "authToken"])
async def test_every_client_payload_shape_authenticates(system: RunningSystem, shape: str) -> None:
    token = token_of(system.admin)
    payload = {
        "Authorization": {"Authorization": f"Bearer {token}"},
        "headers": {"headers": {"authorization": f"Bearer {token}"}},
        "authToken": {"authToken": token},
    }[shape]
    async with websockets.connect(ws_base(system.admin) + GQL, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "q", "type": "subscribe", "payload": {"query": "{ availableNodes }"}}))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert answer["type"] == "next" and answer["payload"]["data"]["availableNodes"]


@pytest.mark.parametrize("payload", [None, {"Authorization": "Bearer forged"}, {"authToken": "x.y.z"}])
async def test_a_connection_init_without_a_valid_token_is_closed_with_4403(
    system: RunningSystem, payload: dict[str, str] | None
) -> None:
    async with websockets.connect(ws_base(system.admin) + GQL, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


async def test_the_query_string_token_stays_out_of_the_logs(system: RunningSystem) -> None:
    token = token_of(system.admin)
    client_id = f"logged-{uuid.uuid4().hex[:8]}"
    async with websockets.connect(f"{ws_base(system.admin)}/ws/{client_id}?access_token={token}") as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "pong"}
    log = system.logs / "api.log"

    async def logged() -> bool:
        return f"/ws/{client_id}" in log.read_text(errors="replace")

    await eventually(logged, timeout=10, what="uvicorn to log the WebSocket")  # the line exists ...
    assert token not in log.read_text(errors="replace")  # ... without the token


async def next_live(ws: Any) -> dict[str, Any]:
    """The next /ws message that is not a notification (those come unasked: the user's runs finish)."""
    while True:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if message["type"] != "notification":
            return message


async def test_websocket_subscribe_right_after_submit_sees_every_update(system: RunningSystem) -> None:
    async with websockets.connect(f"{ws_base(system.admin)}/ws/submitter?access_token={token_of(system.admin)}") as ws:
        for run in range(20):
            response = await system.admin.post(
                "/api/v1/execute", json={"graph": GRAPH, "inputs": {"text": f"a b {run}"}}
            )
            assert response.status_code == 202, response.text
            execution_id = response.json()["execution_id"]
            subscribe: dict[str, Any] = {"type": "subscribe", "topic": f"execution:{execution_id}"}
            if run % 2:  # half with the submit's position token, half relying on the server's own wait
                subscribe["after"] = response.json()["position"]
            await ws.send(json.dumps(subscribe))
            messages = []
            while True:
                message = await next_live(ws)
                assert message["type"] != "error", (run, message)
                messages.append(message)
                data = message.get("data", {})
                if data.get("status") in ("completed", "failed") or data.get("event") in FINISHED_EVENTS:
                    break
            assert messages[0] == {"type": "subscribed", "topic": f"execution:{execution_id}"}
            state = messages[1]["data"]
            assert messages[1]["type"] == "execution_update" and state["execution_id"] == execution_id
            versions = [state["version"]] + [m["data"]["version"] for m in messages[2:]]
            assert versions == list(range(versions[0], versions[0] + len(versions))), (run, versions)
            assert state["status"] == "completed" or messages[-1]["data"]["event"] == "Completed", (run, messages)
            await ws.send(json.dumps({"type": "unsubscribe", "topic": f"execution:{execution_id}"}))
            assert (await next_live(ws))["type"] == "unsubscribed"


async def test_graphql_execution_updates_right_after_submit(system: RunningSystem) -> None:
    transport = WebsocketsTransport(
        url=ws_base(system.admin) + GQL, init_payload={"Authorization": f"Bearer {token_of(system.admin)}"}
    )
    document = gql(
        "subscription($id: String!, $after: String) { executionUpdates(executionId: $id, after: $after)"
        " { status progress version } }"
    )
    async with Client(transport=transport) as session:
        for run in range(4):
            response = await system.admin.post("/api/v1/execute", json={"graph": GRAPH, "inputs": {"text": "x y"}})
            body = response.json()
            variables = {"id": body["execution_id"], "after": body["position"] if run % 2 else None}
            request = GraphQLRequest(document, variable_values=variables)
            updates = [r["executionUpdates"] async for r in session.subscribe(request)]
            assert updates[-1]["status"] == "completed", updates
            assert [u["version"] for u in updates] == sorted({u["version"] for u in updates})


async def test_subscribing_to_someone_elses_or_an_unknown_execution_is_not_found(system: RunningSystem) -> None:
    async with websockets.connect(f"{ws_base(system.admin)}/ws/unknown?access_token={token_of(system.admin)}") as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": f"execution:{uuid.uuid4()}"}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))  # no submission kept: no wait
        assert reply["type"] == "error" and reply["code"] == "not_found"
        await ws.send(json.dumps({"type": "subscribe", "topic": f"execution:{uuid.uuid4()}", "after": "0:999999999"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "error"


async def test_websocket_messages_are_limited_per_user_across_connections(system: RunningSystem) -> None:
    await create_user(system.admin, "chatty")
    async with await client_for(system.anonymous, "chatty") as chatty:
        url = f"{ws_base(chatty)}/ws/chatty?access_token={token_of(chatty)}"
        replies = []
        async with websockets.connect(url) as first, websockets.connect(url) as second:
            for n in range(MESSAGE_LIMIT + 10):  # alternating connections: the count is the user's
                ws = first if n % 2 else second
                await ws.send(json.dumps({"type": "ping"}))
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        assert replies[:MESSAGE_LIMIT] == [{"type": "pong"}] * MESSAGE_LIMIT
        refused = replies[MESSAGE_LIMIT:]
        assert all(r["type"] == "error" and r["code"] == "rate_limited" and r["retry_after"] >= 1 for r in refused)
        # Another user is not affected.
        async with websockets.connect(f"{ws_base(system.admin)}/ws/other?access_token={token_of(system.admin)}") as ws:
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "pong"}


async def test_connections_are_capped_per_user(system: RunningSystem) -> None:
    await create_user(system.admin, "hoarder")
    async with await client_for(system.anonymous, "hoarder") as hoarder:
        url = f"{ws_base(hoarder)}/ws/hoard?access_token={token_of(hoarder)}"
        open_sockets = [await websockets.connect(url) for _ in range(CONNECTION_CAP)]
        try:
            with pytest.raises(websockets.InvalidStatus):  # refused before the handshake completes
                await websockets.connect(url)
            async with websockets.connect(ws_base(hoarder) + GQL, subprotocols=["graphql-transport-ws"]) as gws:  # type: ignore[list-item]
                await gws.send(json.dumps({"type": "connection_init", "payload": {"authToken": token_of(hoarder)}}))
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(gws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
            await open_sockets.pop().close()

            async def admitted() -> bool:  # the slot is given back once the server has seen the close
                try:
                    async with websockets.connect(url) as ws:
                        await ws.send(json.dumps({"type": "ping"}))
                        return json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "pong"}
                except websockets.InvalidStatus:
                    return False

            await eventually(admitted, timeout=10, what="a freed connection slot")
        finally:
            for ws in open_sockets:
                await ws.close()


async def test_a_client_that_never_answers_pings_is_closed(system: RunningSystem) -> None:
    host, port = str(system.admin.base_url).removeprefix("http://").rstrip("/").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws/silent?access_token={token_of(system.admin)} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    assert b" 101 " in await asyncio.wait_for(reader.readline(), 10)
    started = time.monotonic()
    # A real client answers the server's pings (below); this one reads and never answers, so the server
    # ends the connection ping_interval + ping_timeout after it opened.
    async with websockets.connect(f"{ws_base(system.admin)}/ws/alive?access_token={token_of(system.admin)}") as alive:
        while await asyncio.wait_for(reader.read(4096), 30):
            pass
        elapsed = time.monotonic() - started
        assert PING_S <= elapsed < 6 * PING_S + 5, elapsed
        # The answering client, opened at the same time, has lived as long and is still served.
        await alive.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(alive.recv(), 10)) == {"type": "pong"}
    writer.close()


async def test_notifications_arrive_live_and_are_listed_after_reconnecting(system: RunningSystem) -> None:
    user = await create_user(system.admin, "noted")
    async with await client_for(system.anonymous, "noted") as noted:
        transport = WebsocketsTransport(url=ws_base(noted) + GQL, init_payload={"authToken": token_of(noted)})
        graphql_notes: list[dict[str, Any]] = []
        async with (
            websockets.connect(f"{ws_base(noted)}/ws/noted-1?access_token={token_of(noted)}") as first,
            websockets.connect(f"{ws_base(noted)}/ws/noted-2?access_token={token_of(noted)}") as second,
            Client(transport=transport) as session,
        ):

            async def listen() -> None:
                async for result in session.subscribe(gql("subscription { notifications { kind data message } }")):
                    graphql_notes.append(result["notifications"])

            listener = asyncio.create_task(listen())
            object_id = await ingest(noted, "mine, annotated by the admin", {})  # own changes: no notification
            await ensure_graphql_listening(system, noted, object_id, graphql_notes)
            submitted = await noted.post("/api/v1/execute", json={"graph": GRAPH, "inputs": {"text": "one two"}})
            assert submitted.status_code == 202, submitted.text
            execution_id = submitted.json()["execution_id"]
            changed = await system.admin.patch(f"/api/v1/users/{user['user_id']}", json={"role": "viewer"})
            assert changed.status_code == 200, changed.text
            wanted = {"object_annotated", "execution_completed", "role_changed"}
            for ws in (first, second):  # every open connection of the user, with no subscription
                kinds: dict[str, dict[str, Any]] = {}
                while not wanted <= set(kinds):
                    message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if message["type"] == "notification":
                        kinds[message["data"]["kind"]] = message["data"]
                assert kinds["object_annotated"]["data"]["object_id"] == object_id
                assert kinds["execution_completed"]["data"]["execution_id"] == execution_id
                assert kinds["role_changed"]["data"]["role"] == "viewer"

            async def graphql_has_all() -> bool:
                return wanted <= {n["kind"] for n in graphql_notes}

            await eventually(graphql_has_all, timeout=30, what="the notifications over GraphQL")
            listener.cancel()
        assert "object_ingested" not in {n["kind"] for n in graphql_notes}
    # Offline now; back with a new token: everything is listed, unread, until marked read.
    async with await client_for(system.anonymous, "noted") as again:
        unread = (await again.get("/api/v1/notifications", params={"unread": "true"})).json()
        assert wanted <= {n["kind"] for n in unread} and all(n["read_at"] is None for n in unread)
        ids = [n["notification_id"] for n in unread]
        marked = await again.post("/api/v1/notifications/read", json={"ids": ids})
        assert marked.status_code == 200 and marked.json() == {"marked": len(ids)}
        assert (await again.get("/api/v1/notifications", params={"unread": "true"})).json() == []
        listed = (await again.get("/api/v1/notifications")).json()
        assert {n["notification_id"] for n in listed} >= set(ids) and all(n["read_at"] for n in listed)
        other = await system.admin.get("/api/v1/notifications")  # nobody sees another user's notifications
        assert not set(ids) & {n["notification_id"] for n in other.json()}


async def ensure_graphql_listening(
    system: RunningSystem, noted: httpx.AsyncClient, object_id: str, graphql_notes: list[dict[str, Any]]
) -> None:
    """Annotate the object as the admin until the GraphQL subscription (registered with no ack) hears of it."""
    for attempt in range(15):
        body = {"annotation_type": "label", "content": f"by admin {attempt}"}
        response = await system.admin.post(f"/api/v1/data/{object_id}/annotations", json=body)
        assert response.status_code in (200, 201), response.text

        async def heard() -> bool:
            return any(n["kind"] == "object_annotated" for n in graphql_notes)

        try:
            await eventually(heard, timeout=2, what="an annotation notification")
            return
        except AssertionError:
            continue
    raise AssertionError("the GraphQL notifications subscription never heard of an annotation")


async def test_every_change_of_a_batch_too_large_for_one_notification_reaches_live_clients(
    system: RunningSystem,
) -> None:
    """A projection catching up commits hundreds of changes at once; each is still announced (the batch's
    NOTIFY goes in parts: cut to fit one, most changes went unannounced and followers waited for ever)."""
    projections = system.workers["projections"].process
    assert projections is not None
    token = token_of(system.admin)
    async with websockets.connect(f"{ws_base(system.admin)}/ws/catching-up?access_token={token}") as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": "data_changes"}))
        assert (await next_live(ws))["type"] == "subscribed"
        gate = asyncio.Semaphore(16)

        async def one(number: int) -> str:
            async with gate:
                return await ingest(system.admin, f"backlog {number}", {})

        os.kill(projections.pid, signal.SIGSTOP)  # the ingests pile up unprojected
        try:
            ids = set(await asyncio.gather(*(one(number) for number in range(300))))
        finally:
            os.kill(projections.pid, signal.SIGCONT)
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        try:
            while not ids <= seen:
                message = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
                if message["type"] == "data_change":
                    seen.add(message["object_id"])
        except TimeoutError:
            pytest.fail(f"{len(ids - seen)} of {len(ids)} ingests never announced on data_changes")
