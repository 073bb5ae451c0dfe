"""Search (projections.search) through the real pipeline: REST, GraphQL and the graph's search node.

One system for the module; each test uses words of its own so the tests do not see each other's objects.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from httpx import AsyncClient

from tests.conftest import environment_for
from tests.integration.harness import eventually
from tests.integration.system import RunningSystem, running_system
from tests.integration.users import client_for, create_user


@pytest.fixture(scope="module")
async def system(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningSystem]:
    tmp_path: Path = tmp_path_factory.mktemp("search")
    async with running_system(environment_for(services, tmp_path), tmp_path) as running:
        yield running


@pytest.fixture
def client(system: RunningSystem) -> AsyncClient:
    return system.admin


async def ingest(
    client: AsyncClient,
    content: str,
    content_type: str = "text/plain",
    *,
    labels: list[str] | None = None,
    **metadata: Any,
) -> dict:
    body = {"content": content, "content_type": content_type, "metadata": metadata, "annotations": labels or []}
    response = await client.post("/api/v1/ingest", json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    await client.get(f"/api/v1/data/{created['object_id']}", headers={"X-Consistency-Token": created["position"]})
    return dict(created)


async def found(client: AsyncClient, **params: Any) -> dict:
    if isinstance(params.get("filters"), dict):
        params["filters"] = json.dumps(params["filters"])
    response = await client.get("/api/v1/search", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def ids(result: dict) -> list[str]:
    return [r["object_id"] for r in result["results"]]


async def test_ranking_snippet_and_annotations_in_results(client: AsyncClient) -> None:
    often = await ingest(client, "Kafka keeps an ordered log; kafka partitions scale kafka.", labels=["infra"])
    once = await ingest(client, "A short note that mentions kafka once among many other words here.")
    await ingest(client, "PostgreSQL stores the read models.")
    annotation = {"annotation_type": "sentiment", "content": {"score": 0.9}, "confidence": 0.8}
    added = await client.post(f"/api/v1/data/{often['object_id']}/annotations", json=annotation)
    assert added.status_code == 201, added.text
    await client.get(f"/api/v1/data/{often['object_id']}", headers={"X-Consistency-Token": added.json()["position"]})

    result = await found(client, query="kafka")
    assert ids(result) == [often["object_id"], once["object_id"]] and result["total"] == 2
    best = result["results"][0]
    assert best["score"] > result["results"][1]["score"] > 0
    assert "<b>Kafka</b>" in best["snippet"] or "<b>kafka</b>" in best["snippet"]
    kinds = sorted((a["annotation_type"], a["content"]) for a in best["annotations"])
    assert kinds == [("label", "infra"), ("sentiment", {"score": 0.9})]


async def test_phrases_or_exclusion_and_prefixes(client: AsyncClient) -> None:
    swift = await ingest(client, "the quick brown zorilla jumps")
    slow = await ingest(client, "the brown quick zorilla sleeps")
    other = await ingest(client, "a zebrafinch sings")
    assert ids(await found(client, query='"quick brown zorilla"')) == [swift["object_id"]]
    assert set(ids(await found(client, query="zorilla -sleeps"))) == {swift["object_id"]}
    assert set(ids(await found(client, query="jumps or sings"))) == {swift["object_id"], other["object_id"]}
    assert set(ids(await found(client, query="zor*"))) == {swift["object_id"], slow["object_id"]}
    assert set(ids(await found(client, query="zebra*"))) == {other["object_id"]}
    assert ids(await found(client, query="zebra")) == []  # without '*' a word is a word
    assert set(ids(await found(client, query="zor* sleeps"))) == {slow["object_id"]}


async def test_each_filter_narrows(client: AsyncClient) -> None:
    plain = await ingest(client, "marmoset notes", labels=["primate"], colour="red")
    data = await ingest(client, '{"animal": "marmoset"}', "application/json", colour="red")
    markdown = await ingest(client, "# marmoset", "text/markdown", colour="blue")
    note = {"annotation_type": "reviewed", "content": True, "confidence": 1.0}
    response = await client.post(f"/api/v1/data/{markdown['object_id']}/annotations", json=note)
    await client.get(
        f"/api/v1/data/{markdown['object_id']}", headers={"X-Consistency-Token": response.json()["position"]}
    )
    q = "marmoset"
    assert (await found(client, query=q))["total"] == 3
    assert ids(await found(client, query=q, filters={"content_type": "application/json"})) == [data["object_id"]]
    assert set(ids(await found(client, query=q, filters={"object_type": "text"}))) == {
        plain["object_id"],
        markdown["object_id"],
    }
    assert set(ids(await found(client, query=q, filters={"metadata": {"colour": "red"}}))) == {
        plain["object_id"],
        data["object_id"],
    }
    assert ids(await found(client, query=q, filters={"label": "primate"})) == [plain["object_id"]]
    assert ids(await found(client, query=q, filters={"annotation_type": "reviewed"})) == [markdown["object_id"]]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert (await found(client, query=q, filters={"created_after": future}))["total"] == 0
    assert (await found(client, query=q, filters={"created_after": past, "created_before": future}))["total"] == 3
    me = (await client.get("/api/v1/auth/me")).json()
    owner = me["user_id"]
    assert (await found(client, query=q, filters={"owner": owner}))["total"] == 3
    assert (await found(client, query=q, filters={"owner": "someone-else"}))["total"] == 0
    # modality metadata: the filters alone, newest first
    by_metadata = await found(client, modality="metadata", filters={"metadata": {"colour": "blue"}})
    assert ids(by_metadata) == [markdown["object_id"]] and by_metadata["results"][0]["snippet"] == ""


async def test_totals_and_pagination(client: AsyncClient) -> None:
    created = [await ingest(client, f"pangolin number {i} " + "pangolin " * i) for i in range(7)]
    pages = [await found(client, query="pangolin", limit=3, offset=offset) for offset in (0, 3, 6, 9)]
    assert [p["total"] for p in pages] == [7, 7, 7, 7]
    assert [len(p["results"]) for p in pages] == [3, 3, 1, 0]
    seen = [object_id for page in pages for object_id in ids(page)]
    assert sorted(seen) == sorted(c["object_id"] for c in created) and len(set(seen)) == 7
    assert seen[0] == created[-1]["object_id"]  # the most mentions ranks first


async def test_deleted_objects_never_appear(client: AsyncClient) -> None:
    kept = await ingest(client, "okapi stays")
    doomed = await ingest(client, "okapi goes", labels=["okapi-label"])
    deleted = await client.delete(f"/api/v1/data/{doomed['object_id']}")
    assert deleted.status_code == 200, deleted.text
    token = deleted.json()["position"]
    await client.get(f"/api/v1/data/{kept['object_id']}", params={"consistency_token": token})
    assert ids(await found(client, query="okapi")) == [kept["object_id"]]
    assert (await found(client, modality="metadata", filters={"label": "okapi-label"}))["total"] == 0


async def test_visibility_non_admins_find_only_their_own(system: RunningSystem, client: AsyncClient) -> None:
    await create_user(client, "search-alice")
    async with await client_for(system.anonymous, "search-alice") as alice:
        hers = await ingest(alice, "narwhal of alice")
        admins = await ingest(client, "narwhal of the admin")
        assert ids(await found(alice, query="narwhal")) == [hers["object_id"]]
        assert set(ids(await found(client, query="narwhal"))) == {hers["object_id"], admins["object_id"]}


async def test_graphql_and_the_search_node_find_what_rest_finds(client: AsyncClient) -> None:
    a = await ingest(client, "capybara swims well", labels=["rodent"])
    b = await ingest(client, "capybara naps")
    await ingest(client, "unrelated tapir")
    rest = ids(await found(client, query="capybara -naps"))
    assert rest == [a["object_id"]]

    gql = await client.post(
        "/api/graphql",
        json={"query": '{ searchObjects(query: "capybara -naps") { objectId annotations { annotationType } } }'},
    )
    objects = gql.json()["data"]["searchObjects"]
    assert [o["objectId"] for o in objects] == rest and objects[0]["annotations"] == [{"annotationType": "label"}]
    labelled = await client.post(
        "/api/graphql",
        json={"query": '{ searchObjects(modality: "metadata", filters: {label: "rodent"}) { objectId } }'},
    )
    assert labelled.json()["data"]["searchObjects"] == [{"objectId": a["object_id"]}]

    graph = {"nodes": [{"id": "find", "type": "search", "params": {"query": "capybara -naps"}}], "edges": []}
    submitted = await client.post("/api/v1/execute", json={"graph": graph, "inputs": {}})
    assert submitted.status_code == 202, submitted.text
    execution_id = submitted.json()["execution_id"]

    async def finished() -> dict | None:
        response = await client.get(f"/api/v1/executions/{execution_id}")
        body = response.json() if response.status_code == 200 else {}
        return body if body.get("status") in ("completed", "failed") else None

    done = await eventually(finished, timeout=90, what="the search graph to finish")
    assert done["status"] == "completed", done
    assert json.loads(done["nodes"][0]["summary"]["ids"]["preview"]) == rest
    assert b["object_id"] not in json.dumps(done["nodes"][0]["summary"])


async def test_bad_search_requests_are_4xx(client: AsyncClient) -> None:
    cases: list[tuple[dict[str, Any], int]] = [
        ({"query": "x", "filters": "[1]"}, 400),
        ({"query": "x", "filters": '{"colour": "red"}'}, 400),
        ({"query": "x", "filters": "{"}, 400),
        ({"query": "x", "filters": '{"created_after": "yesterday"}'}, 400),
        ({"query": "x", "filters": '{"created_after": "2026-01-01T00:00:00"}'}, 400),  # no time zone
        ({"query": "x", "modality": "image"}, 400),
        ({"query": "x", "modality": "metadata"}, 400),  # metadata selects by filters alone
        ({"query": "x", "limit": 0}, 400),
        ({"query": "   "}, 400),
        ({}, 400),
    ]
    for params, status in cases:
        response = await client.get("/api/v1/search", params=params)
        assert response.status_code == status, (params, response.text)
        assert response.json()["error"]["code"] == status
    unsupported = (await client.get("/api/v1/search", params={"query": "x", "modality": "image"})).json()
    assert unsupported["error"]["details"] == {"field": "modality", "supported": ["metadata", "text"]}


async def test_queries_with_only_operators_or_stop_words_find_nothing_without_error(client: AsyncClient) -> None:
    for query in ["-", '""', "*", "-x*", "!!!"]:
        response = await client.get("/api/v1/search", params={"query": query})
        assert response.status_code == 200, (query, response.text)
        assert response.json()["total"] == 0, query


async def test_a_search_with_a_writes_token_finds_that_write_though_the_read_model_lags(
    system: RunningSystem, client: AsyncClient
) -> None:
    # The projection is held (SIGSTOP), so only a search that waits for the token can find the object.
    projections = system.workers["projections"].process
    assert projections is not None
    body = {"content": "quillwort tokened", "content_type": "text/plain", "metadata": {}}
    os.kill(projections.pid, signal.SIGSTOP)
    try:
        created = (await client.post("/api/v1/ingest", json=body)).json()
        untokened = await found(client, query="quillwort")
        rest = asyncio.create_task(
            client.get(
                "/api/v1/search", params={"query": "quillwort"}, headers={"X-Consistency-Token": created["position"]}
            )
        )
        graphql = asyncio.create_task(
            client.post(
                "/api/graphql",
                json={
                    "query": 'query($t: String) { searchObjects(query: "quillwort", consistencyToken: $t) {'
                    " objectId } }",
                    "variables": {"t": created["position"]},
                },
            )
        )
        await asyncio.sleep(0.5)
        assert not graphql.done(), graphql.result().text
        assert not rest.done()  # waiting for the projection
    finally:
        os.kill(projections.pid, signal.SIGCONT)
    assert untokened["results"] == []
    response = await rest
    assert response.status_code == 200, response.text
    assert ids(response.json()) == [created["object_id"]]
    answer = (await graphql).json()
    assert answer.get("errors") is None, answer
    assert [hit["objectId"] for hit in answer["data"]["searchObjects"]] == [created["object_id"]]
