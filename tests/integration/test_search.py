"""Full-text search over content and metadata, with filters, through the real pipeline."""

from __future__ import annotations

from typing import Any

from httpx import AsyncClient


async def ingest(client: AsyncClient, content: str, content_type: str = "text/plain", **metadata: Any) -> dict:
    body = {"content": content, "content_type": content_type, "metadata": metadata}
    response = await client.post("/api/v1/ingest", json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    await client.get(f"/api/v1/data/{created['object_id']}", headers={"X-Consistency-Token": created["position"]})
    return dict(created)


async def test_search_finds_text_content_and_ranks_it(client: AsyncClient) -> None:
    kafka = await ingest(client, "Kafka keeps an ordered log of events; Kafka partitions scale it.", topic="infra")
    await ingest(client, "PostgreSQL stores the read models.", topic="infra")
    await ingest(client, "Nothing to see here.", topic="misc")
    response = await client.get("/api/v1/search", params={"query": "kafka log"})
    assert response.status_code == 200, response.text
    found = response.json()
    assert found["total"] == 1 and found["query"] == "kafka log"
    assert [r["object_id"] for r in found["results"]] == [kafka["object_id"]]
    assert found["results"][0]["score"] > 0


async def test_search_filters_by_metadata_and_type(client: AsyncClient) -> None:
    a = await ingest(client, "apples and pears", colour="red")
    await ingest(client, "apples and plums", colour="green")
    await ingest(client, '{"fruit": "apples"}', content_type="application/json", colour="red")
    filters = '{"metadata": {"colour": "red"}, "object_type": "text"}'
    response = await client.get("/api/v1/search", params={"query": "apples", "filters": filters})
    assert response.status_code == 200, response.text
    assert [r["object_id"] for r in response.json()["results"]] == [a["object_id"]]
    everything = await client.get("/api/v1/search", params={"query": "apples", "limit": 2})
    assert everything.json()["total"] == 3 and len(everything.json()["results"]) == 2


async def test_bad_search_requests_are_4xx(client: AsyncClient) -> None:
    cases: list[tuple[dict[str, Any], int]] = [
        ({"query": "x", "filters": "[1]"}, 400),
        ({"query": "x", "filters": '{"colour": "red"}'}, 400),
        ({"query": "x", "filters": "{"}, 400),
        ({"query": "x", "modality": "image"}, 422),
        ({"query": "x", "limit": 0}, 400),
        ({"query": "   "}, 400),
        ({}, 400),
    ]
    for params, status in cases:
        response = await client.get("/api/v1/search", params=params)
        assert response.status_code == status, (params, response.text)
        assert response.json()["error"]["code"] == status
