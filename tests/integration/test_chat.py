"""Chat (issue 12) through the running system: WebSocket chat_message, GraphQL chat/conversation, REST
history, the slash commands under the caller's rights, and the history surviving a rebuild of the read
models; and notifications marked read (Inbox events) staying read after a rebuild. One system serves the
module; each test uses users and words of its own."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from infra.runtime.rebuild import rebuild_read_models
from infra.runtime.settings import load_settings
from tests.conftest import environment_for
from tests.integration.harness import ws_ask
from tests.integration.system import RunningSystem, running_system
from tests.integration.users import client_for, create_user, ingest_readable

GQL = "/api/graphql"
GRAPH = {
    "nodes": [{"id": "in", "type": "input", "params": {"name": "text"}}, {"id": "count", "type": "word_count"}],
    "edges": [{"from": "in.value", "to": "count.text"}],
}
CHAT = """mutation($content: String!, $id: String) {
  chat(content: $content, conversationId: $id) {
    conversationId messageId kind content sources { objectId snippet score } data version position
  }
}"""
HISTORY = """query($id: String!, $token: String) {
  conversation(id: $id, consistencyToken: $token) {
    conversationId owner total messages { seq messageId role kind author content sources { objectId } createdAt }
  }
}"""


@pytest.fixture(scope="module")
async def system(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningSystem]:
    tmp_path: Path = tmp_path_factory.mktemp("chat")
    async with running_system(environment_for(services, tmp_path), tmp_path) as running:
        yield running


async def user(system: RunningSystem, role: str = "user") -> httpx.AsyncClient:
    name = f"{role}-{uuid.uuid4().hex[:8]}"
    await create_user(system.admin, name, role)
    return await client_for(system.anonymous, name)


async def ingest(client: httpx.AsyncClient, content: str) -> str:
    return (await ingest_readable(client, content))[0]


def ws_url(client: httpx.AsyncClient, client_id: str) -> str:
    token = str(client.headers["authorization"]).split(" ", 1)[1]
    return str(client.base_url).replace("http://", "ws://").rstrip("/") + f"/ws/{client_id}?access_token={token}"


async def gql(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    response = await client.post(GQL, json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def history(client: httpx.AsyncClient, conversation_id: str, token: str | None = None) -> httpx.Response:
    headers = {"X-Consistency-Token": token} if token else {}
    return await client.get(f"/api/v1/conversations/{conversation_id}", headers=headers)


async def test_a_question_is_answered_from_the_callers_own_objects_and_kept_in_the_history(
    system: RunningSystem,
) -> None:
    alice, bob = await user(system), await user(system)
    async with alice, bob:
        tag = uuid.uuid4().hex[:10]  # a word of this test's own
        storage = await ingest(alice, f"Quokkas{tag} sleep in burrows during the day. They eat leaves at night.")
        diet = await ingest(alice, f"The diet of quokkas{tag} is grasses and leaves. Water comes from plants.")
        await ingest(alice, "Wombats dig long burrows.")
        theirs = await ingest(bob, f"Bob's quokkas{tag} eat grasses and leaves and sleep all day in burrows.")

        async with websockets.connect(ws_url(alice, "alice-chat")) as ws:
            reply = await ws_ask(ws, {"type": "chat_message", "content": f"What is the diet of quokkas{tag}?"})
            assert reply["type"] == "chat_response", reply
            data = reply["data"]
            assert data["kind"] == "answer"
            sources = [s["object_id"] for s in data["sources"]]
            assert sources[0] == diet and set(sources) == {diet, storage}, data  # never bob's
            assert theirs not in sources and data["content"].startswith(f"The diet of quokkas{tag}")
            conversation_id = data["conversation_id"]

            follow = {
                "type": "chat_message",
                "content": f"Where do quokkas{tag} sleep?",
                "conversation_id": conversation_id,
            }
            again = (await ws_ask(ws, follow))["data"]
            assert again["conversation_id"] == conversation_id and again["sources"][0]["object_id"] == storage

        response = await history(alice, conversation_id, again["position"])
        assert response.status_code == 200, response.text
        shown = response.json()
        entries = [(m["role"], m["kind"], m["content"]) for m in shown["messages"]]
        assert entries == [
            ("user", "message", f"What is the diet of quokkas{tag}?"),
            ("assistant", "answer", data["content"]),
            ("user", "message", f"Where do quokkas{tag} sleep?"),
            ("assistant", "answer", again["content"]),
        ]
        assert [m["seq"] for m in shown["messages"]] == [2, 3, 4, 5] and shown["total"] == 4
        assert shown["messages"][1]["sources"][0]["object_id"] == diet
        stamps = [m["created_at"] for m in shown["messages"]]
        assert stamps == sorted(stamps)
        page = (await alice.get(f"/api/v1/conversations/{conversation_id}", params={"offset": 2, "limit": 1})).json()
        assert [m["seq"] for m in page["messages"]] == [4]

        graphql = (await gql(alice, HISTORY, id=conversation_id))["data"]["conversation"]
        assert [(m["role"], m["content"]) for m in graphql["messages"]] == [(r, c) for r, _, c in entries]

        # The history is the Conversation's events: a read model rebuilt from offset 0 has it too.
        await rebuild_read_models(load_settings(environ=system.env), swap=True)
        rebuilt = await history(alice, conversation_id)
        assert rebuilt.status_code == 200 and rebuilt.json() == shown


async def test_another_users_conversation_is_not_found_and_admins_see_it(system: RunningSystem) -> None:
    alice, bob = await user(system), await user(system)
    async with alice, bob:
        mine = (await gql(alice, CHAT, content="/help"))["data"]["chat"]
        assert mine["kind"] == "help"
        conversation_id = mine["conversationId"]
        assert (await history(alice, conversation_id, mine["position"])).status_code == 200

        refused = await gql(bob, CHAT, content="/help", id=conversation_id)
        assert refused["data"] is None and refused["errors"][0]["extensions"]["code"] == 404
        response = await history(bob, conversation_id)
        assert response.status_code == 404 and response.json()["error"]["reason"] == "not_found"
        assert (await gql(bob, HISTORY, id=conversation_id))["data"]["conversation"] is None
        async with websockets.connect(ws_url(bob, "bob-chat")) as ws:
            reply = await ws_ask(ws, {"type": "chat_message", "content": "hi", "conversation_id": conversation_id})
            assert reply["type"] == "error" and reply["code"] == "not_found"
        assert (await history(system.admin, conversation_id)).status_code == 200
        assert (await history(alice, str(uuid.uuid4()))).status_code == 404
        # its audit history: the owner's (as the event stream shows her its events) and admins', nobody else's
        audit = await alice.get(f"/api/v1/audit/{conversation_id}")
        assert audit.status_code == 200, audit.text
        assert [e["event_type"] for e in audit.json()["events"]][:2] == [
            "Conversation.Started",
            "Conversation.MessagePosted",
        ]
        assert (await bob.get(f"/api/v1/audit/{conversation_id}")).status_code == 404


async def test_slash_commands_act_with_the_callers_rights(system: RunningSystem) -> None:
    alice, bob, viewer = await user(system), await user(system), await user(system, "viewer")
    async with alice, bob, viewer:
        tag = uuid.uuid4().hex[:10]
        kept = await ingest(alice, f"numbat{tag} termites")
        await ingest(bob, f"numbat{tag} of bob")

        found = (await gql(alice, CHAT, content=f"/search numbat{tag}"))["data"]["chat"]
        assert found["kind"] == "search" and [s["objectId"] for s in found["sources"]] == [kept]
        assert found["data"]["total"] == 1

        stored = (await gql(alice, CHAT, content=f"/ingest bilby{tag} burrows"))["data"]["chat"]
        assert stored["kind"] == "ingest"
        object_id = stored["data"]["object_id"]
        read = await alice.get(f"/api/v1/data/{object_id}", headers={"X-Consistency-Token": stored["data"]["position"]})
        assert (
            read.status_code == 200 and read.json()["owner"] == (await alice.get("/api/v1/auth/me")).json()["user_id"]
        )

        denied = await gql(viewer, CHAT, content="/ingest not allowed")  # a viewer may not chat at all
        assert denied["errors"][0]["extensions"]["code"] == 403, denied

        submitted = await alice.post("/api/v1/execute", json={"graph": GRAPH, "inputs": {"text": "a b c"}})
        assert submitted.status_code == 202, submitted.text
        execution_id = submitted.json()["execution_id"]
        await alice.get(
            f"/api/v1/executions/{execution_id}", headers={"X-Consistency-Token": submitted.json()["position"]}
        )
        status = (await gql(alice, CHAT, content=f"/status {execution_id}"))["data"]["chat"]
        assert status["kind"] == "status" and status["data"]["execution"]["execution_id"] == execution_id
        hidden = (await gql(bob, CHAT, content=f"/status {execution_id}"))["data"]["chat"]
        assert hidden["kind"] == "error" and hidden["data"]["code"] == "not_found"

        unknown = (await gql(alice, CHAT, content="/frobnicate"))["data"]["chat"]
        assert unknown["kind"] == "help" and "/frobnicate" in unknown["content"]
        assert all(f"/{name}" in unknown["content"] for name in ("search", "status", "ingest"))


async def test_bad_chat_input_is_an_error_message_and_the_connection_stays_usable(system: RunningSystem) -> None:
    alice = await user(system)
    async with alice, websockets.connect(ws_url(alice, "alice-bad")) as ws:
        for message, code in (
            ({"type": "chat_message", "content": "a\u0000b"}, "validation_error"),
            ({"type": "chat_message", "content": "x" * 4001}, "validation_error"),
            ({"type": "chat_message", "content": ""}, "validation_error"),
            ({"type": "chat_message"}, "validation_error"),
            ({"type": "chat_message", "content": 5}, "validation_error"),
            ({"type": "chat_message", "content": "hi", "conversation_id": "nope"}, "validation_error"),
            # a misspelt field must not silently start a new conversation
            ({"type": "chat_message", "content": "hi", "conversationId": str(uuid.uuid4())}, "validation_error"),
        ):
            reply = await ws_ask(ws, message)
            assert reply["type"] == "error" and reply["code"] == code, (message, reply)
        assert (await ws_ask(ws, {"type": "ping"}))["type"] == "pong"
        # JSON in a binary frame is read like text; bytes that are not UTF-8 are an error, not a dropped socket
        for frame, kind in ((b'{"type": "ping"}', "pong"), (b"\xff\xfe{", "error"), (b'{"type": "ping"}', "pong")):
            await ws.send(frame)
            assert json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] == kind, frame
        answered = await ws_ask(ws, {"type": "chat_message", "content": "/help"})
        assert answered["type"] == "chat_response"
        refused = await gql(alice, CHAT, content="a\u0000b")
        assert refused["data"] is None and refused["errors"][0]["extensions"]["code"] == 400


async def test_graphql_pages_out_of_range_are_400_naming_the_field(system: RunningSystem) -> None:
    alice = await user(system)
    async with alice:
        for query, field in (
            ('{ conversation(id: "00000000-0000-0000-0000-000000000000", limit: 0) { owner } }', "limit"),
            ('{ conversation(id: "00000000-0000-0000-0000-000000000000", offset: -1) { owner } }', "offset"),
            ("{ notifications(limit: 101) { kind } }", "limit"),
            ('{ searchObjects(query: "x", offset: 10001) { objectId } }', "offset"),
        ):
            error = (await gql(alice, query))["errors"][0]
            assert error["extensions"] == {"code": 400, "reason": "validation_error", "details": {"field": field}}


async def annotated_by_admin(system: RunningSystem, object_id: str) -> None:
    """The admin annotates the object (its owner is told), and the read models show it."""
    note = {"annotation_type": "comment", "content": "seen", "confidence": 1.0}
    response = await system.admin.post(f"/api/v1/data/{object_id}/annotations", json=note)
    assert response.status_code == 201, response.text
    token = {"X-Consistency-Token": response.json()["position"]}
    assert (await system.admin.get(f"/api/v1/data/{object_id}", headers=token)).status_code == 200


async def test_notifications_read_are_inbox_events_that_a_rebuild_keeps(system: RunningSystem) -> None:
    alice = await user(system)
    async with alice:
        first, second = await ingest(alice, "noted one"), await ingest(alice, "noted two")
        await annotated_by_admin(system, first)
        unread = (await alice.get("/api/v1/notifications", params={"unread": "true"})).json()
        assert [n["data"]["object_id"] for n in unread] == [first]
        marked = await alice.post("/api/v1/notifications/read", json={"ids": [unread[0]["notification_id"]]})
        assert marked.status_code == 200 and marked.json() == {"marked": 1}
        assert (await alice.get("/api/v1/notifications", params={"unread": "true"})).json() == []

        await annotated_by_admin(system, second)
        assert len((await alice.get("/api/v1/notifications", params={"unread": "true"})).json()) == 1
        assert (await alice.post("/api/v1/notifications/read", json={})).json() == {"marked": 1}  # all of them
        before = (await alice.get("/api/v1/notifications")).json()
        assert len(before) == 2 and all(n["read_at"] for n in before)

        await rebuild_read_models(load_settings(environ=system.env), swap=True)
        assert (await alice.get("/api/v1/notifications")).json() == before
