"""GraphQL (queries, mutations, a subscription) and the WebSocket protocol against the real server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets

pytestmark = pytest.mark.shared_system  # one system for the module's tests

GQL = "/api/graphql"


async def gql(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    response = await client.post(GQL, json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    return dict(response.json())


def ws_url(client: httpx.AsyncClient, path: str) -> str:
    """The WebSocket address, with the client's token (browsers cannot set headers on a WebSocket)."""
    token = client.headers["authorization"].split(" ", 1)[1]
    return str(client.base_url).replace("http://", "ws://").rstrip("/") + f"{path}?access_token={token}"


INGEST = """mutation($content: String!, $labels: [String!]) {
  ingestData(content: $content, contentType: "text/plain", metadata: {source: "gql"}, annotations: $labels) {
    objectId version contentHash metadata annotations { annotationType content confidence }
  }
}"""


async def test_graphql_ingest_annotate_query_and_search(client: httpx.AsyncClient) -> None:
    created = (await gql(client, INGEST, content="graph ql walrus", labels=["sea"]))["data"]["ingestData"]
    assert created["version"] == 2 and created["metadata"] == {"source": "gql"}
    assert created["annotations"] == [{"annotationType": "label", "content": "sea", "confidence": 1.0}]
    object_id = created["objectId"]

    note = await gql(
        client,
        'mutation($id: String!) { addAnnotation(objectId: $id, annotationType: "c", content: {a: 1}, confidence: 0.5)'
        " { annotationType content confidence } }",
        id=object_id,
    )
    assert note["data"]["addAnnotation"] == {"annotationType": "c", "content": {"a": 1}, "confidence": 0.5}

    read = await gql(
        client, "query($id: String!) { dataObject(objectId: $id) { version annotations { content } } }", id=object_id
    )
    assert read["data"]["dataObject"] == {"version": 3, "annotations": [{"content": "sea"}, {"content": {"a": 1}}]}

    found = await gql(client, '{ searchObjects(query: "walrus") { objectId } }')
    assert found["data"]["searchObjects"] == [{"objectId": object_id}]


async def test_graphql_errors_carry_the_envelope_fields(client: httpx.AsyncClient) -> None:
    missing = await gql(client, '{ dataObject(objectId: "00000000-0000-0000-0000-000000000000") { objectId } }')
    assert missing["data"]["dataObject"] is None
    stale = await gql(client, INGEST, content="v", labels=[])
    object_id = stale["data"]["ingestData"]["objectId"]
    conflict = await gql(
        client,
        "mutation($id: String!) { deleteDataObject(objectId: $id, expectedVersion: 9) { version } }",
        id=object_id,
    )
    assert conflict["errors"][0]["extensions"]["code"] == 409
    bad = await gql(client, '{ searchObjects(query: "x", modality: "image") { objectId } }')
    assert bad["errors"][0]["extensions"]["reason"] == "unsupported_modality"


async def test_websocket_subscribers_receive_data_changes(client: httpx.AsyncClient) -> None:
    async with websockets.connect(ws_url(client, "/ws/client-1")) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": "data_changes"}))
        assert json.loads(await ws.recv()) == {"type": "subscribed", "topic": "data_changes"}
        response = await client.post("/api/v1/ingest", json={"content": "live", "content_type": "text/plain"})
        object_id = response.json()["object_id"]
        message = json.loads(await asyncio.wait_for(ws.recv(), 15))
        while message.get("object_id") not in (object_id, None):  # a change an earlier test made, projected now
            message = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert message["type"] == "data_change" and message["object_id"] == object_id
        assert message["change_type"] == "Ingested" and message["topic"] == "data_changes"

        await ws.send(json.dumps({"type": "subscribe", "topic": "nonsense"}))
        assert json.loads(await ws.recv())["code"] == "invalid_topic"
        await ws.send("{not json")
        assert json.loads(await ws.recv())["code"] == "invalid_json"
        await ws.send(json.dumps({"type": "frobnicate"}))
        assert json.loads(await ws.recv())["code"] == "unsupported"
        await ws.send(json.dumps({"type": "unsubscribe", "topic": "data_changes"}))
        assert json.loads(await ws.recv())["type"] == "unsubscribed"


async def test_graphql_subscription_streams_data_changes(client: httpx.AsyncClient) -> None:
    async with websockets.connect(ws_url(client, GQL), subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init"}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        query = (
            'subscription { dataChanges(filters: {change_type: "Ingested"})'
            " { objectId changeType version contentType } }"
        )
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
        # The server registers the subscription shortly after the subscribe message, with no ack:
        # ingest until a change arrives rather than sleeping, and check it is one of ours.
        created: list[str] = []
        message: dict[str, Any] = {}
        for _ in range(10):
            response = await client.post("/api/v1/ingest", json={"content": "sub", "content_type": "text/markdown"})
            created.append(response.json()["object_id"])
            try:
                message = json.loads(await asyncio.wait_for(ws.recv(), 3))
                break
            except TimeoutError:
                continue
        assert message.get("type") == "next", message
        change = message["payload"]["data"]["dataChanges"]
        assert change["objectId"] in created
        assert change["changeType"] == "INGESTED" and change["contentType"] == "text/markdown"
        assert change["version"] >= 1


GRAPH = {
    "nodes": [
        {"id": "in", "type": "input", "params": {"name": "text"}},
        {"id": "count", "type": "word_count"},
    ],
    "edges": [{"from": "in.value", "to": "count.text"}],
}


async def test_graphql_and_websocket_see_an_execution_through(client: httpx.AsyncClient) -> None:
    nodes = await gql(client, '{ availableNodes(category: "text") }')
    assert any(node["type"] == "word_count" for node in nodes["data"]["availableNodes"])
    submitted = await gql(
        client,
        "mutation($g: JSON!, $i: JSON) { executeGraph(graph: $g, inputs: $i) { executionId status } }",
        g=GRAPH,
        i={"text": "one two three"},
    )
    execution = submitted["data"]["executeGraph"]
    assert execution["status"] in {"submitted", "running", "completed"}

    async with websockets.connect(ws_url(client, GQL), subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init"}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        query = "subscription($id: String!) { executionUpdates(executionId: $id) { status progress } }"
        payload = {"query": query, "variables": {"id": execution["executionId"]}}
        await ws.send(json.dumps({"id": "e", "type": "subscribe", "payload": payload}))
        statuses = []
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if message["type"] == "complete":
                break
            assert message["type"] == "next", message
            statuses.append(message["payload"]["data"]["executionUpdates"])
        assert statuses[-1] == {"status": "completed", "progress": 1.0}
        progress = [s["progress"] for s in statuses]
        assert progress == sorted(progress)

    async with websockets.connect(ws_url(client, "/ws/c2")) as ws:
        await ws.send(json.dumps({"type": "execution_status", "execution_id": execution["executionId"]}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert reply["type"] == "execution_status" and reply["data"]["status"] == "completed"
        await ws.send(json.dumps({"type": "execution_status", "execution_id": "nope"}))
        assert json.loads(await ws.recv())["code"] == "not_found"


async def test_websocket_handshake_without_a_valid_token_is_refused(client: httpx.AsyncClient) -> None:
    base = str(client.base_url).replace("http://", "ws://").rstrip("/")
    for url in (f"{base}/ws/c3", f"{base}/ws/c3?access_token=forged", f"{base}{GQL}"):
        try:
            async with websockets.connect(url) as ws:
                await ws.recv()
        except (websockets.InvalidStatus, websockets.ConnectionClosed):
            continue
        raise AssertionError(f"{url} was accepted without a valid token")


async def test_graphql_needs_a_token_and_the_right_role(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.post(GQL, json={"query": "{ availableNodes }"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
