"""Spec conformance: a client written from seed-gateway-spec.md alone, its requests as the spec writes them.

Each test names the spec's section. One system (workers, API) serves the whole module.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from infra.runtime.settings import Settings, load_settings
from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME
from tests.integration.harness import UNASKED, ws_ask
from tests.integration.system import RunningSystem
from tests.integration.users import assert_envelope, system_with_alice_and_vera, token_of, ws_base

GQL = "/api/graphql"
GRAPH = {
    "nodes": [{"id": "in", "type": "input", "params": {"name": "text"}}, {"id": "count", "type": "word_count"}],
    "edges": [{"from": "in.value", "to": "count.text"}],
}
FINISHED = {"completed", "failed", "cancelled"}
# The spec's "Configuration" section, verbatim.
SPEC_YAML = """\
server:
  host: 0.0.0.0
  port: 8000
  workers: 4
  reload: false

cors:
  origins:
    - http://localhost:3000
    - https://app.example.com
  credentials: true
  methods: ["GET", "POST", "PUT", "DELETE"]
  headers: ["*"]

authentication:
  secret_key: ${SECRET_KEY}
  algorithm: HS256
  access_token_expire_minutes: 30
  refresh_token_expire_days: 7

rate_limiting:
  default_limit: "1000 per hour"
  burst_limit: "100 per minute"
  redis_url: redis://localhost:6379/1

websocket:
  ping_interval: 30
  ping_timeout: 10
  max_connections: 1000
  max_message_size: 1048576  # 1MB

monitoring:
  metrics_enabled: true
  tracing_enabled: true
  health_check_path: /health
  metrics_path: /metrics
"""


system, users = system_with_alice_and_vera("spec-conformance")


async def gql(client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    response = await client.post(GQL, json={"query": query, "variables": variables or {}})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def next_reply(ws: Any) -> dict[str, Any]:
    """The next /ws message that is not an unasked notification."""
    while True:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if message["type"] not in UNASKED:
            return message


# --- Configuration -----------------------------------------------------------------------------------


def test_the_spec_api_gateway_yaml_loads_with_its_values(tmp_path: Path) -> None:
    """Found: the spec's own api_gateway.yaml stopped the program (``unknown setting server.reload``)."""
    path = tmp_path / "api_gateway.yaml"
    path.write_text(SPEC_YAML)
    settings = load_settings(path, environ={"SECRET_KEY": "k" * 40})
    assert settings.server.reload is False and settings.server.workers == 4 and settings.server.host == "0.0.0.0"
    assert settings.cors.origins == ("http://localhost:3000", "https://app.example.com")
    assert settings.authentication.secret_key == "k" * 40 and settings.authentication.access_token_expire_minutes == 30
    assert settings.rate_limiting.burst_limit == "100 per minute"
    assert settings.redis.url == "redis://localhost:6379/1"  # rate_limiting.redis_url is the Redis to use
    assert settings.websocket.max_message_size == 1048576 and settings.monitoring.tracing_enabled is True
    reloading = load_settings(environ={"PIPELINE_SERVER_RELOAD": "true"})
    assert reloading.server.reload is True


def test_the_cors_origins_default_to_the_specs() -> None:
    assert Settings().cors.origins == ("http://localhost:3000", "https://app.example.com")


async def test_a_cors_preflight_from_the_specs_app_origin_is_allowed(system: RunningSystem) -> None:
    origin = "https://app.example.com"
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    response = await system.anonymous.options("/api/v1/ingest", headers=headers)
    assert response.status_code in (200, 204), response.text
    assert response.headers["access-control-allow-origin"] == origin
    assert response.headers["access-control-allow-credentials"] == "true"


# --- JWT Authentication ------------------------------------------------------------------------------


async def test_login_takes_username_and_password_from_the_query_as_the_spec_signature_does(
    system: RunningSystem,
) -> None:
    """``login(username: str, password: str)`` in FastAPI reads query parameters; the JSON body works too."""
    params = {"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD}
    response = await system.anonymous.post("/api/v1/auth/login", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 30 * 60 and body["access_token"]
    me = await system.anonymous.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200 and me.json()["username"] == ADMIN_USERNAME
    wrong = await system.anonymous.post("/api/v1/auth/login", params={**params, "password": "not the password"})
    assert assert_envelope(wrong, 401)["message"] == "Incorrect username or password"
    missing = await system.anonymous.post("/api/v1/auth/login", params={"username": ADMIN_USERNAME})
    assert assert_envelope(missing, 400)["details"]["field"] == "password"


async def test_refusals_carry_the_spec_messages(system: RunningSystem, users: dict[str, httpx.AsyncClient]) -> None:
    """get_current_user's "Could not validate credentials", require_permission's "Insufficient permissions"."""
    forged = await system.anonymous.get("/api/v1/auth/me", headers={"Authorization": "Bearer not.a.token"})
    error = assert_envelope(forged, 401)
    assert error["message"] == "Could not validate credentials" and error["details"]["cause"], error
    viewer = await users["vera"].post("/api/v1/ingest", json={"content": "x", "content_type": "text/plain"})
    error = assert_envelope(viewer, 403)
    assert error["message"] == "Insufficient permissions", error
    assert error["details"]["cause"] == "the viewer role lacks the write permission", error


# --- API Documentation -------------------------------------------------------------------------------


async def test_the_openapi_document_is_at_fastapis_address_with_the_specs_scheme_and_tags(
    system: RunningSystem,
) -> None:
    response = await system.anonymous.get("/openapi.json")
    assert response.status_code == 200, response.text
    schema = response.json()
    assert schema["info"]["title"] == "Pipeline API" and schema["info"]["version"] == "1.0.0"
    assert schema["components"]["securitySchemes"]["Bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    tags = {tag["name"]: tag.get("description") for tag in schema["tags"]}
    assert tags["data"] == "Data management operations" and tags["execution"] == "Graph execution operations"
    assert tags["search"] == "Search operations" and tags["auth"] == "Authentication operations"
    assert schema["paths"]["/api/v1/execute"]["post"]["tags"] == ["execution"]
    assert schema == (await system.anonymous.get("/api/docs/openapi.json")).json()


async def test_swagger_ui_and_redoc_are_served_at_the_specs_addresses(system: RunningSystem) -> None:
    """``docs_url="/api/docs"``, ``redoc_url="/api/redoc"``: ReDoc was a redirect to /api/docs/redoc."""
    for path, name in (("/api/docs", "swagger"), ("/api/redoc", "redoc")):
        response = await system.anonymous.get(path)  # no redirect to follow
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"].startswith("text/html") and name in response.text.lower()


async def test_health_has_the_spec_health_check_keys(system: RunningSystem) -> None:
    response = await system.anonymous.get("/health")
    body = response.json()
    generated = uuid.UUID(response.headers["X-Request-ID"])  # the spec's add_request_id: str(uuid.uuid4())
    assert str(generated) == response.headers["X-Request-ID"] and generated.version == 4
    assert body["status"] == "healthy", body
    assert body["database"] is True and body["storage"] is True and body["cache"] is True


# --- API Routes --------------------------------------------------------------------------------------


async def test_an_invalid_graph_is_400_with_its_errors_as_the_spec_execute_graph(
    users: dict[str, httpx.AsyncClient],
) -> None:
    """``raise HTTPException(400, detail=validation.errors)``: it was 422."""
    graph = {"nodes": [{"id": "a", "type": "teleport"}], "edges": []}
    response = await users["alice"].post("/api/v1/execute", json={"graph": graph, "inputs": {}, "options": {}})
    error = assert_envelope(response, 400)
    assert error["reason"] == "invalid_graph" and error["details"]["problems"][0]["node_id"] == "a"
    mutation = "mutation($g: JSON!) { executeGraph(graph: $g, inputs: {}) { executionId } }"
    answered = await gql(users["alice"], mutation, {"g": graph})
    assert answered["errors"][0]["extensions"]["code"] == 400, answered


async def test_the_spec_rest_routes_answer_the_spec_fields(users: dict[str, httpx.AsyncClient]) -> None:
    alice = users["alice"]
    ingested = await alice.post(
        "/api/v1/ingest",
        json={
            "content": "quokkas eat leaves",
            "content_type": "text/plain",
            "metadata": {"k": "v"},
            "annotations": ["x"],
        },
    )
    assert ingested.is_success, ingested.text
    body = ingested.json()
    assert body["status"] == "success" and {"object_id", "created_at", "processing_time_ms"} <= body.keys()
    token = {"X-Consistency-Token": body["position"]}  # search reads what the read model has: wait for it
    assert (await alice.get(f"/api/v1/data/{body['object_id']}", headers=token)).status_code == 200
    found = await alice.get("/api/v1/search", params={"query": "quokkas", "limit": 10, "offset": 0})
    assert found.status_code == 200, found.text
    page = found.json()
    assert page["query"] == "quokkas" and page["filters"] == {} and page["total"] == 1
    assert page["results"][0]["object_id"] == body["object_id"]
    filtered = await alice.get(
        "/api/v1/search", params={"query": "quokkas", "filters": json.dumps({"metadata": {"k": "v"}})}
    )
    assert filtered.json()["filters"] == {"metadata": {"k": "v"}} and filtered.json()["total"] == 1
    # The spec's upload: files, and metadata as a form field holding JSON text.
    files = [("files", ("a.txt", b"first file", "text/plain")), ("files", ("b.txt", b"second", "text/plain"))]
    uploaded = await alice.post("/api/v1/upload", files=files, data={"metadata": json.dumps({"batch": 1})})
    assert uploaded.is_success, uploaded.text
    assert uploaded.json()["count"] == 2
    assert [(u["filename"], u["size"]) for u in uploaded.json()["uploaded"]] == [("a.txt", 10), ("b.txt", 6)]
    deleted = await alice.delete(f"/api/v1/data/{body['object_id']}")
    assert deleted.status_code == 200, deleted.text
    assert {"status": "deleted", "object_id": body["object_id"]}.items() <= deleted.json().items()
    submitted = await alice.post("/api/v1/execute", json={"graph": GRAPH, "inputs": {"text": "a b c"}})
    assert submitted.is_success, submitted.text
    assert submitted.json()["status"] == "submitted" and submitted.json()["estimated_time_seconds"] > 0


# --- GraphQL API -------------------------------------------------------------------------------------


async def test_the_spec_graphql_operations_with_the_specs_fields(users: dict[str, httpx.AsyncClient]) -> None:
    alice = users["alice"]
    spec_object = "objectId objectType contentHash storageLocation metadata createdAt annotations { annotationId }"
    spec_annotation = "annotationId annotatorId annotationType content confidence createdAt"
    spec_status = "executionId status progress currentNode errors startedAt completedAt"
    made = await gql(
        alice,
        'mutation { ingestData(content: "wombats dig", contentType: "text/plain", metadata: {})'
        f" {{ {spec_object} }} }}",
    )
    object_id = made["data"]["ingestData"]["objectId"]
    note = await gql(
        alice,
        "mutation($id: String!, $c: JSON!) {"
        f' addAnnotation(objectId: $id, annotationType: "label", content: $c) {{ {spec_annotation} }} }}',
        {"id": object_id, "c": {"label": "burrower"}},
    )
    assert note["data"]["addAnnotation"]["content"] == {"label": "burrower"}, note
    read = await gql(
        alice, f"query($id: String!) {{ dataObject(objectId: $id) {{ {spec_object} }} }}", {"id": object_id}
    )
    assert read["data"]["dataObject"]["objectId"] == object_id and len(read["data"]["dataObject"]["annotations"]) == 1
    found = await gql(alice, 'query { searchObjects(query: "wombats", modality: "text", limit: 10) { objectId } }')
    assert [o["objectId"] for o in found["data"]["searchObjects"]] == [object_id], found
    nodes = await gql(alice, 'query { availableNodes(category: "data") }')
    assert nodes["data"]["availableNodes"] and {n["category"] for n in nodes["data"]["availableNodes"]} == {"data"}
    run = await gql(
        alice,
        f"mutation($g: JSON!, $i: JSON) {{ executeGraph(graph: $g, inputs: $i) {{ {spec_status} }} }}",
        {"g": GRAPH, "i": {"text": "one two"}},
    )
    execution_id = run["data"]["executeGraph"]["executionId"]
    status = await gql(
        alice, f"query($id: String!) {{ executionStatus(executionId: $id) {{ {spec_status} }} }}", {"id": execution_id}
    )
    assert status["data"]["executionStatus"]["executionId"] == execution_id, status


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_data_changes_over_both_graphql_websocket_protocols(
    system: RunningSystem, users: dict[str, httpx.AsyncClient], protocol: str
) -> None:
    """strawberry's router speaks the current protocol and the legacy one (subscriptions-transport-ws)."""
    alice = users["alice"]
    url = f"{ws_base(alice)}{GQL}"
    headers = {"Authorization": f"Bearer {token_of(alice)}"}
    async with websockets.connect(url, subprotocols=[protocol], additional_headers=headers) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        start = "subscribe" if protocol == "graphql-transport-ws" else "start"
        query = "subscription { dataChanges { objectId objectType changeType } }"
        await ws.send(json.dumps({"id": "1", "type": start, "payload": {"query": query}}))
        # The subscription is live once a change made after it arrives; keep writing until one does.
        async with asyncio.timeout(60):
            while True:
                made = await alice.post("/api/v1/ingest", json={"content": protocol, "content_type": "text/plain"})
                assert made.is_success, made.text
                try:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    break
                except TimeoutError:
                    continue
    assert message["type"] == ("next" if protocol == "graphql-transport-ws" else "data"), message
    assert message["payload"]["data"]["dataChanges"]["changeType"] == "INGESTED"


# --- WebSocket Implementation ------------------------------------------------------------------------


async def test_the_spec_websocket_messages(users: dict[str, httpx.AsyncClient]) -> None:
    alice = users["alice"]
    # Any client id the spec's clients choose: an email address was refused (1008).
    async with websockets.connect(f"{ws_base(alice)}/ws/alice@example.com?access_token={token_of(alice)}") as ws:
        assert await ws_ask(ws, {"type": "subscribe", "topic": "data_changes"}) == {
            "type": "subscribed",
            "topic": "data_changes",
        }
        made = await alice.post("/api/v1/ingest", json={"content": "websocket spec", "content_type": "text/plain"})
        change = await next_reply(ws)
        while change.get("object_id") != made.json()["object_id"]:  # an earlier test's write, committed late
            assert change["type"] == "data_change", change
            change = await next_reply(ws)
        assert change["type"] == "data_change", change
        assert change["change_type"] and isinstance(change["data"], dict)
        reply = await ws_ask(ws, {"type": "chat_message", "content": "what about websocket?"})
        assert reply["type"] == "chat_response" and reply["data"]["content"], reply


async def test_execution_updates_carry_the_execution_status_as_the_spec_broadcast(
    users: dict[str, httpx.AsyncClient],
) -> None:
    """``broadcast_execution_update`` sends ``{"type": "execution_update", "execution_id", "data": status}``:
    every update's data had only ``{event, version}`` but the first."""
    alice = users["alice"]
    async with websockets.connect(f"{ws_base(alice)}/ws/spec-runner?access_token={token_of(alice)}") as ws:
        submitted = await alice.post("/api/v1/execute", json={"graph": GRAPH, "inputs": {"text": "a b c d"}})
        assert submitted.is_success, submitted.text
        execution_id = submitted.json()["execution_id"]
        topic = f"execution:{execution_id}"
        assert await ws_ask(ws, {"type": "subscribe", "topic": topic}) == {"type": "subscribed", "topic": topic}
        updates: list[dict[str, Any]] = []
        while not updates or updates[-1]["data"]["status"] not in FINISHED:
            update = await next_reply(ws)
            assert update["type"] == "execution_update" and update["execution_id"] == execution_id, update
            assert {"status", "progress", "current_node", "errors", "started_at", "completed_at"} <= update[
                "data"
            ].keys()
            updates.append(update)
        versions = [u["data"]["version"] for u in updates]
        assert versions == list(range(versions[0], versions[0] + len(versions))), versions
        assert updates[-1]["data"]["status"] == "completed" and updates[-1]["data"]["completed_at"], updates[-1]
        # The spec's execution_status request answers the same status.
        status = await ws_ask(ws, {"type": "execution_status", "execution_id": execution_id})
        assert status["type"] == "execution_status" and status["data"]["status"] == "completed", status
        assert status["data"]["version"] == versions[-1]
