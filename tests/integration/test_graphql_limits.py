"""GraphQL's limits against the real server: costly fields counted against the rate limits, size and
alias caps, and no database error text in any answer. One system serves the whole module."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from infra.runtime.settings import load_settings
from tests.conftest import environment_for
from tests.integration.harness import query
from tests.integration.system import RunningSystem, running_system
from tests.integration.users import client_for, create_user

GQL = "/api/graphql"
BURST = 100


@pytest.fixture(scope="module")
async def system(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningSystem]:
    tmp_path = tmp_path_factory.mktemp("graphql-limits")
    env = {
        **environment_for(services, tmp_path),
        "PIPELINE_RATE_LIMITING_BURST_LIMIT": f"{BURST} per minute",
        # Room in the document limits for 150 ingests in one request, so the rate limit is what refuses it.
        "PIPELINE_GRAPHQL_MAX_ALIASES": "200",
        "PIPELINE_GRAPHQL_MAX_COSTLY_FIELDS": "200",
        "PIPELINE_GRAPHQL_MAX_TOKENS": "5000",
        "PIPELINE_GRAPHQL_MAX_RESPONSE_BYTES": "100000",
    }
    async with running_system(env, tmp_path) as running:
        yield running


async def post(client: httpx.AsyncClient, document: str, **variables: Any) -> dict[str, Any]:
    response = await client.post(GQL, json={"query": document, "variables": variables})
    assert response.status_code == 200, response.text
    return dict(response.json())


def ingests(count: int, tag: str) -> str:
    fields = (f'i{n}: ingestData(content: "{tag} {n}", contentType: "text/plain") {{ objectId }}' for n in range(count))
    return "mutation {\n" + "\n".join(fields) + "\n}"


async def objects_owned_by(system: RunningSystem, user_id: str) -> int:
    rows = await query(
        load_settings(environ=system.env), "SELECT count(*) FROM data_objects WHERE owner = %s", (user_id,)
    )
    return int(rows[0][0])


async def test_each_aliased_ingest_counts_against_the_ingest_burst_limit(system: RunningSystem) -> None:
    user = await create_user(system.admin, "gql-bursty")
    async with await client_for(system.anonymous, "gql-bursty") as client:
        first = await post(client, ingests(60, "first"))
        assert "errors" not in first, first
        assert len({v["objectId"] for v in first["data"].values()}) == 60

        # 60 more do not fit in the 40 left of the burst limit: none runs, one 429 names the cost.
        second = await post(client, ingests(60, "second"))
        assert second["data"] is None
        [refused] = second["errors"]
        assert refused["extensions"]["code"] == 429 and refused["extensions"]["reason"] == "rate_limited"
        assert refused["extensions"]["details"]["cost"] == 60

        # GraphQL and REST share the burst: REST is refused now too.
        rest = await client.post("/api/v1/ingest", json={"content": "rest", "content_type": "text/plain"})
        assert rest.status_code == 429, rest.text

    # ingestData answers once the read model has the object, so these counts are final.
    assert await objects_owned_by(system, user["user_id"]) == 60


async def test_150_aliased_ingests_never_create_more_than_the_burst_limit(system: RunningSystem) -> None:
    user = await create_user(system.admin, "gql-flood")
    async with await client_for(system.anonymous, "gql-flood") as client:
        answer = await post(client, ingests(150, "flood"))
    assert answer["data"] is None and answer["errors"][0]["extensions"]["code"] == 429
    assert await objects_owned_by(system, user["user_id"]) <= BURST


async def test_5000_aliased_available_nodes_are_refused_before_running(system: RunningSystem) -> None:
    document = "{" + " ".join(f"n{i}: availableNodes" for i in range(5000)) + "}"
    started = time.monotonic()
    response = await system.admin.post(GQL, json={"query": document})
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and len(response.content) < 2000, response.text[:500]
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == 400 and "tokens" in error["message"]
    assert elapsed < 5, f"refusing took {elapsed:.1f} s"


async def test_too_many_aliases_are_refused(system: RunningSystem) -> None:
    document = "{" + " ".join(f'n{i}: executionStatus(executionId: "x") {{ status }}' for i in range(201)) + "}"
    answer = await post(system.admin, document)
    assert answer.get("data") is None
    assert any("aliases" in e["message"] and e["extensions"]["code"] == 400 for e in answer["errors"]), answer


async def test_a_response_over_the_size_cap_is_replaced_by_a_413_error(system: RunningSystem) -> None:
    small = await post(system.admin, "{ availableNodes }")
    assert "errors" not in small and small["data"]["availableNodes"]
    response = await system.admin.post(
        GQL, json={"query": "{" + " ".join(f"n{i}: availableNodes" for i in range(30)) + "}"}
    )
    assert response.status_code == 200 and len(response.content) < 2000, len(response.content)
    answer = response.json()
    assert answer["data"] is None
    assert answer["errors"][0]["extensions"] == {
        "code": 413,
        "reason": "response_too_large",
        "details": {"max_bytes": 100000},
    }


@pytest.mark.parametrize(
    "document",
    [
        '{ dataObject(objectId: "not-a-uuid") { objectId } }',
        '{ executionStatus(executionId: "not-a-uuid") { status } }',
        '{ dataObject(objectId: "1\'; select 1; --") { objectId } }',
    ],
)
async def test_a_malformed_id_answers_without_database_text(system: RunningSystem, document: str) -> None:
    response = await system.admin.post(GQL, json={"query": document})
    assert response.status_code == 200
    text = response.text.lower()
    for leak in ("invalid input", "syntax for type", "psycopg", "sqlstate", "postgres", "traceback"):
        assert leak not in text, response.text
    for error in response.json().get("errors", []):
        assert 400 <= error["extensions"]["code"] < 500, response.text


async def test_a_malformed_document_answers_400_and_is_not_logged_as_an_error(system: RunningSystem) -> None:
    answer = await post(system.admin, "{ noSuchFieldAnywhere }")
    assert answer["errors"][0]["extensions"] == {"code": 400, "reason": "invalid_query"}
    syntax = await post(system.admin, "{ dataObject(")
    assert syntax["errors"][0]["extensions"]["code"] == 400
    log = (system.logs / "api.log").read_text(errors="replace")
    assert "noSuchFieldAnywhere" not in log and "Syntax Error" not in log, log[-3000:]


@pytest.mark.parametrize(
    ("method", "request_options"),
    [
        ("POST", {"json": [{"query": "{ availableNodes }"}] * 2}),  # a batch
        ("POST", {"json": {"variables": {}}}),  # no query
        ("POST", {"json": {"query": 5}}),
        ("POST", {"json": {"query": "{ availableNodes }", "operationName": "Nope"}}),
        ("POST", {"content": b'{"query": ', "headers": {"Content-Type": "application/json"}}),
        ("POST", {"data": {"query": "{ availableNodes }"}}),  # a form body
        ("GET", {"params": {"query": 'mutation { chat(content: "hi") { content } }'}}),
        ("POST", {"json": {"query": "subscription { notifications { kind } }"}}),  # was a 500: over WebSocket only
    ],
)
async def test_a_request_graphql_cannot_run_is_a_400_in_the_error_envelope(
    system: RunningSystem, method: str, request_options: dict[str, Any]
) -> None:
    response = await system.admin.request(method, GQL, **request_options)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 400 and error["reason"] == "validation_error" and error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
