"""The fifth hardening sweep: what an independent tester's clients found, one test each.

One system (workers, API) serves the whole module, with a small annotation limit per object. Each test
names the request that showed the defect.
"""

from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import Any

import httpx
import websockets

from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME
from tests.integration.conftest import login
from tests.integration.harness import eventually, ws_ask
from tests.integration.system import RunningSystem
from tests.integration.test_authz_everywhere import gql
from tests.integration.test_hardening_3 import until_closed
from tests.integration.users import (
    PASSWORD,
    assert_envelope,
    clients_with_roles,
    system_with_alice_and_vera,
    token_of,
    ws_base,
)

GQL = "/api/graphql"
MAX_ANNOTATIONS = 3  # per object, in this module's system

system, users = system_with_alice_and_vera(
    "hardening-5",
    {
        "PIPELINE_STORAGE_MAX_ANNOTATIONS_PER_OBJECT": str(MAX_ANNOTATIONS),
        "PIPELINE_STORAGE_MAX_ANNOTATIONS": "2",
        "PIPELINE_WEBSOCKET_MAX_MESSAGE_SIZE": "65536",
    },
)


async def finished(client: httpx.AsyncClient, execution_id: str) -> dict[str, Any] | None:
    body = (await client.get(f"/api/v1/executions/{execution_id}")).json()
    return body if body.get("status") in {"completed", "failed", "cancelled"} else None


async def no_dead_letters(system: RunningSystem) -> None:
    """Nothing a client sent in this module may end as a dead letter or stop a worker."""
    health = (await system.admin.get("/health")).json()
    assert health["status"] == "healthy", health
    assert health["dead_letters"]["processor_since_start"] in (0, None), health["dead_letters"]
    assert health["dead_letters"]["projections"] == 0, health["dead_letters"]


# --- annotations per object -------------------------------------------------------------------------


async def test_an_object_takes_at_most_the_configured_annotations_on_every_path(
    system: RunningSystem, users: dict[str, httpx.AsyncClient]
) -> None:
    """Found: ``POST /api/v1/data/{id}/annotations`` in a loop was accepted for ever: one object's
    aggregate, state record and read model grew without bound."""
    alice = users["alice"]
    body = {"content": "annotated", "content_type": "text/plain", "annotations": ["one", "two"]}
    created = (await alice.post("/api/v1/ingest", json=body)).json()
    object_id = created["object_id"]
    url = f"/api/v1/data/{object_id}/annotations"
    third = await alice.post(url, json={"annotation_type": "label", "content": "three"})
    assert third.status_code == 201, third.text
    refused = assert_envelope(await alice.post(url, json={"annotation_type": "label", "content": "four"}), 409)
    assert refused["reason"] == "limit_reached" and refused["details"]["limit"] == MAX_ANNOTATIONS, refused
    mutation = (
        'mutation($id: String!) { addAnnotation(objectId: $id, annotationType: "c", content: 1) { annotationId } }'
    )
    graphql = await gql(alice, mutation, id=object_id)
    assert graphql["errors"][0]["extensions"]["code"] == 409, graphql
    graph = {
        "nodes": [
            {"id": "src", "type": "input", "params": {"name": "text"}},
            {"id": "note", "type": "annotate", "params": {"object_id": object_id}},
        ],
        "edges": [{"from": "src.value", "to": "note.content"}],
    }
    submitted = await alice.post("/api/v1/execute", json={"graph": graph, "inputs": {"text": "five"}})
    assert submitted.status_code == 202, submitted.text
    done = await eventually(partial(finished, alice, submitted.json()["execution_id"]), what="the graph")
    assert done["status"] == "failed" and "annotations" in " ".join(done["errors"]), done
    read = await alice.get(f"/api/v1/data/{object_id}", headers={"X-Consistency-Token": third.json()["position"]})
    assert len(read.json()["annotations"]) == MAX_ANNOTATIONS, read.json()
    await no_dead_letters(system)


# --- WebSocket protocols ----------------------------------------------------------------------------


async def test_every_ws_message_refuses_unknown_fields_and_keeps_the_connection(
    users: dict[str, httpx.AsyncClient],
) -> None:
    """Found: ``{"type": "subscribe", "topic": "events", "aggregateId": ...}`` on ``/ws`` was answered
    ``subscribed`` to every event (the misspelt filter ignored), while ``chat_message`` refused an unknown
    field."""
    alice = users["alice"]
    async with websockets.connect(f"{ws_base(alice)}/ws/probe", additional_headers=_bearer(alice)) as ws:
        for message in (
            {"type": "subscribe", "topic": "events", "aggregateId": "x"},
            {"type": "subscribe", "topic": "data_changes", "filter": "x"},
            {"type": "subscribe", "topic": "execution:00000000-0000-0000-0000-000000000000", "since": "0"},
            {"type": "unsubscribe", "topic": "data_changes", "after": "now"},
            {"type": "ping", "id": 1},
            {"type": "execution_status", "execution_id": "x", "executionId": "x"},
            {"type": "chat_message", "content": "hi", "conversationId": "x"},
        ):
            reply = await ws_ask(ws, message)
            assert reply["type"] == "error" and reply["code"] in ("invalid_message", "validation_error"), reply
        assert await ws_ask(ws, {"type": "ping"}) == {"type": "pong"}
        subscribed = await ws_ask(ws, {"type": "subscribe", "topic": "data_changes"})
        assert subscribed == {"type": "subscribed", "topic": "data_changes"}


def _bearer(client: httpx.AsyncClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_of(client)}"}


async def test_a_graphql_websocket_message_above_the_limit_closes_1009(users: dict[str, httpx.AsyncClient]) -> None:
    """Found: graphql-transport-ws decoded messages up to uvicorn's 16 MiB while ``/ws`` refuses more than
    ``websocket.max_message_size``."""
    alice = users["alice"]
    big = json.dumps({"id": "1", "type": "subscribe", "payload": {"query": "{ __typename }", "x": "é" * 40_000}})
    for protocol in ("graphql-transport-ws", "graphql-ws"):
        async with websockets.connect(f"{ws_base(alice)}{GQL}", subprotocols=[protocol]) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connection_init", "payload": {"authToken": token_of(alice)}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await ws.send(big)  # 80,000 bytes of UTF-8 (40,000 characters): above the module's 65,536
            _, closed = await until_closed(ws, 10)
        assert closed.rcvd is not None and closed.rcvd.code == 1009, (protocol, closed)
    # Below the limit a message still runs.
    async with websockets.connect(f"{ws_base(alice)}{GQL}", subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authToken": token_of(alice)}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        payload = {"query": "{ __typename }", "variables": {"x": "y" * 30_000}}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        assert json.loads(await ws.recv())["payload"] == {"data": {"__typename": "Query"}}


# --- request decoding -------------------------------------------------------------------------------


JSON_TYPE = {"Content-Type": "application/json"}


def raw_operation(query: str, variables: str) -> bytes:
    """A GraphQL request body with ``variables`` as written (JSON a client library would not produce)."""
    return ('{"query": ' + json.dumps(query) + ', "variables": ' + variables + "}").encode()


async def test_a_lone_surrogate_in_graphql_variables_is_a_400_not_a_500(users: dict[str, httpx.AsyncClient]) -> None:
    """Found: ``POST /api/graphql`` with ``"variables": {"c": "\\ud800"}`` for ``ingestData(content: $c)``
    answered a 500 (UnicodeEncodeError once the command was encoded): GraphQL decoded JSON with json.loads,
    which takes a lone surrogate escape (and NaN) that the REST bodies' decoder refuses. Over
    graphql-transport-ws the same message now closes with 4400."""
    alice = users["alice"]
    mutation = 'mutation($c: String!) { ingestData(content: $c, contentType: "text/plain") { objectId } }'
    for variables in ('{"c": "\\ud800"}', '{"c": "x", "n": NaN}'):
        response = await alice.post(GQL, content=raw_operation(mutation, variables), headers=JSON_TYPE)
        assert assert_envelope(response, 400)["details"]["field"] == "body", (variables, response.text)
    async with websockets.connect(f"{ws_base(alice)}{GQL}", subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authToken": token_of(alice)}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        operation = raw_operation(mutation, '{"c": "\\ud800"}').decode()
        await ws.send('{"id": "1", "type": "subscribe", "payload": ' + operation + "}")  # a text frame
        _, closed = await until_closed(ws, 10)
    assert closed.rcvd is not None and closed.rcvd.code == 4400, closed
    # A surrogate pair (an emoji escaped) is still text.
    ok = await alice.post(GQL, content=raw_operation(mutation, '{"c": "\\ud83d\\ude00"}'), headers=JSON_TYPE)
    assert ok.json()["data"]["ingestData"]["objectId"], ok.text


async def test_a_json_body_in_another_charset_is_415(users: dict[str, httpx.AsyncClient]) -> None:
    """Found: ``POST /api/v1/ingest`` with ``Content-Type: application/json; charset=latin-1`` (or UTF-16) was
    read as UTF-8 and accepted: JSON is UTF-8 (RFC 8259 8.1), and a body in the declared charset is misread."""
    alice = users["alice"]
    body = json.dumps({"content": "café", "content_type": "text/plain"}).encode()
    for declared in ("application/json; charset=latin-1", "application/json;CHARSET=UTF-16"):
        response = await alice.post("/api/v1/ingest", content=body, headers={"Content-Type": declared})
        assert assert_envelope(response, 415)["details"]["field"] == "Content-Type", response.text
    for declared in ('application/json; charset="UTF-8"', "application/json;charset=utf8", "application/json; v=1"):
        response = await alice.post("/api/v1/ingest", content=body, headers={"Content-Type": declared})
        assert response.status_code == 201, (declared, response.text)


async def test_a_negative_expected_version_is_a_400_on_graphql_as_on_rest(users: dict[str, httpx.AsyncClient]) -> None:
    """Found: ``addAnnotation(..., expectedVersion: -1)`` answered 409 conflict ("expected version -1, the
    aggregate is at version 1") where REST refuses ``If-Match: "-1"`` as a bad header (400)."""
    alice = users["alice"]
    created = (await alice.post("/api/v1/ingest", json={"content": "versions", "content_type": "text/plain"})).json()
    for mutation in (
        'mutation($id: String!) { addAnnotation(objectId: $id, annotationType: "x", content: 1, expectedVersion: -1)'
        " { content } }",
        "mutation($id: String!) { deleteDataObject(objectId: $id, expectedVersion: -1) { objectId } }",
    ):
        answer = await gql(alice, mutation, id=created["object_id"])
        error = answer["errors"][0]["extensions"]
        assert error["code"] == 400 and error["details"]["field"] == "expected_version", answer


async def test_a_query_parameter_that_is_not_utf8_is_a_400(users: dict[str, httpx.AsyncClient]) -> None:
    """Found: ``GET /api/v1/search?query=%FF%FE`` answered 200 with ``"query": "\ufffd\ufffd"``: the bytes were
    read with replacement characters, so the search ran for something the client never sent."""
    alice = users["alice"]
    for query in ("query=%FF%FE", "query=x&filters=%ED%A0%80", "query=%C0%80"):
        refused = await alice.get(f"/api/v1/search?{query}")
        error = assert_envelope(refused, 400)
        assert error["details"]["field"] == query.split("&")[-1].split("=")[0], (query, error)
    ok = await alice.get("/api/v1/search?query=caf%C3%A9+au+lait")
    assert ok.status_code == 200 and ok.json()["query"] == "café au lait", ok.text


# --- graphs ----------------------------------------------------------------------------------------


async def test_a_graph_field_of_no_meaning_is_refused_not_ignored(users: dict[str, httpx.AsyncClient]) -> None:
    """Found: ``POST /api/v1/execute`` with a node ``{"id": "n", "type": "normalize", "param": {...}}`` (``param``
    for ``params``) ran the node with its defaults (202, completed); extra fields on the graph or an edge were
    ignored too."""
    alice = users["alice"]
    source = {"id": "src", "type": "input", "params": {"name": "text"}}
    edge = {"from": "src.value", "to": "n.text"}
    node = {"id": "n", "type": "normalize", "params": {"lowercase": False}}
    for graph, named in (
        ({"nodes": [source, {**node, "param": {"lowercase": False}}], "edges": [edge]}, "'param'"),
        ({"nodes": [source, node], "edges": [{**edge, "weight": 1}]}, "'weight'"),
        ({"nodes": [source, node], "edges": [edge], "edge": []}, "'edge'"),
    ):
        response = await alice.post("/api/v1/execute", json={"graph": graph, "inputs": {"text": "A"}})
        error = assert_envelope(response, 400)
        assert error["reason"] == "invalid_graph" and named in json.dumps(error["details"]), error
    ok = await alice.post(
        "/api/v1/execute", json={"graph": {"nodes": [source, node], "edges": [edge]}, "inputs": {"text": "A"}}
    )
    assert ok.status_code == 202, ok.text


# --- the event stream ------------------------------------------------------------------------------


async def test_the_event_stream_filters_every_aggregate_it_delivers_and_names_a_bad_type(
    users: dict[str, httpx.AsyncClient],
) -> None:
    """Found: ``GET /api/v1/events/stream?types=Conversation`` (or ``Inbox.NotificationsRead``) was refused as
    an unknown event type although the stream delivers those events, and ``types=Nope`` named ``after`` as
    the bad parameter."""
    alice = users["alice"]
    refused = await alice.get("/api/v1/events/stream", params={"types": "Nope"})
    error = assert_envelope(refused, 400)
    assert error["details"]["field"] == "types" and "Nope" in error["message"], error
    for types in ("Conversation", "Inbox.NotificationsRead", "Conversation,Inbox,DataObject"):
        head = await alice.head("/api/v1/events/stream", params={"types": types, "after": "now"})
        assert head.status_code == 200, (types, head.status_code)


# --- the last admin (kept last: it changes who is an admin) ---------------------------------------


async def test_two_admins_demoting_each_other_at_once_leave_one_admin(system: RunningSystem) -> None:
    """Found: two admins, each ``PATCH /api/v1/users/{the other}`` with ``{"role": "user"}`` at the same
    moment: both were accepted (each user aggregate saw another admin) and no admin was left. The same
    with ``{"disabled": true}``."""
    admin = system.admin
    me = (await admin.get("/api/v1/auth/me")).json()
    async with clients_with_roles(admin, system.anonymous, {"zed": "admin"}) as clients:
        zed = clients["zed"]
        zed_id = (await zed.get("/api/v1/auth/me")).json()["user_id"]
        for change, undo in (({"role": "user"}, {"role": "admin"}), ({"disabled": True}, {"disabled": False})):
            first, second = await asyncio.gather(
                admin.patch(f"/api/v1/users/{zed_id}", json=change),
                zed.patch(f"/api/v1/users/{me['user_id']}", json=change),
            )
            statuses = sorted([first.status_code, second.status_code])
            assert statuses[0] == 200 and statuses[1] in (403, 409), (change, first.text, second.text)
            if 409 in statuses:
                refused = first if first.status_code == 409 else second
                assert refused.json()["error"]["reason"] == "last_admin", refused.text
            # Whoever is still an admin restores the other, so the next round starts from two admins.
            winner, loser_id = (admin, zed_id) if first.status_code == 200 else (zed, me["user_id"])
            restored = await winner.patch(f"/api/v1/users/{loser_id}", json=undo)
            assert restored.status_code == 200, restored.text
            if winner is zed and "disabled" in change:  # a disable ends the tokens it had: log in again
                assert (await admin.get("/api/v1/users")).status_code == 401
                tokens = await login(system.anonymous, ADMIN_USERNAME, ADMIN_PASSWORD)
                admin.headers["Authorization"] = f"Bearer {tokens['access_token']}"
            assert (await admin.get("/api/v1/users")).status_code == 200
            users = (await admin.get("/api/v1/users", params={"limit": 1000})).json()
            assert [u for u in users if u["role"] == "admin" and not u["disabled"]], users
        demoted = await admin.patch(f"/api/v1/users/{zed_id}", json={"role": "viewer"})
        assert demoted.status_code == 200, demoted.text
    await no_dead_letters(system)


async def test_tokens_of_a_disabled_user_stay_refused_when_the_user_is_enabled_again(system: RunningSystem) -> None:
    """Found: ``PATCH /api/v1/users/{id}`` with ``{"disabled": true}`` and then ``{"disabled": false}``:
    the access and refresh tokens issued before the disable worked again (an account disabled because its
    tokens leaked got them back with it)."""
    admin = system.admin
    async with clients_with_roles(admin, system.anonymous, {"kai": "user"}) as clients:
        kai = clients["kai"]
        me = (await kai.get("/api/v1/auth/me")).json()
        tokens = await login(system.anonymous, me["username"], PASSWORD)
        for change in ({"disabled": True}, {"disabled": False}):
            response = await admin.patch(f"/api/v1/users/{me['user_id']}", json=change)
            assert response.status_code == 200, response.text
        assert_envelope(await kai.get("/api/v1/auth/me"), 401)
        old_bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert_envelope(await system.anonymous.get("/api/v1/auth/me", headers=old_bearer), 401)
        refreshed = await system.anonymous.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert_envelope(refreshed, 401)
        again = await login(system.anonymous, me["username"], PASSWORD)  # a new login works
        new_bearer = {"Authorization": f"Bearer {again['access_token']}"}
        assert (await system.anonymous.get("/api/v1/auth/me", headers=new_bearer)).status_code == 200
        renewed = await system.anonymous.post("/api/v1/auth/refresh", json={"refresh_token": again["refresh_token"]})
        assert renewed.status_code == 200, renewed.text
