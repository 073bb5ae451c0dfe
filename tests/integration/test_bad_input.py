"""Bad input gets a 4xx with the error envelope, never a 500; every response has X-Request-ID."""

from __future__ import annotations

import uuid

import pytest
from httpx import AsyncClient as AsyncTestClient

from infra.runtime.settings import Settings

pytestmark = pytest.mark.shared_system  # one system for the module's tests


def assert_envelope(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"code", "message", "details", "request_id"}
    assert error["code"] == status
    assert error["request_id"] == response.headers["x-request-id"]
    return error


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"content_type": "text/plain"}, "validation_error"),  # missing content
        ({"content": 5, "content_type": "text/plain"}, "validation_error"),  # wrong type
        ({"content": "x", "content_type": "text/plain", "surprise": 1}, "validation_error"),  # unknown field
        ({"content": "x", "content_type": "not a mime type"}, "validation_error"),
        ({"content": "x", "content_type": "text/plain", "metadata": []}, "validation_error"),
        ({"content": "x", "content_type": "text/plain", "annotations": [""]}, "validation_error"),
    ],
)
async def test_invalid_ingest_bodies_are_400(client: AsyncTestClient, body: dict, reason: str) -> None:
    error = assert_envelope(await client.post("/api/v1/ingest", json=body), 400)
    assert error["reason"] == reason


async def test_malformed_json_is_400(client: AsyncTestClient) -> None:
    response = await client.post(
        "/api/v1/ingest", content=b'{"content": "x", ', headers={"Content-Type": "application/json"}
    )
    assert_envelope(response, 400)


async def test_oversize_content_is_413(client: AsyncTestClient, settings: Settings) -> None:
    body = {"content": "x" * (settings.storage.max_content_bytes + 1), "content_type": "text/plain"}
    error = assert_envelope(await client.post("/api/v1/ingest", json=body), 413)
    assert error["reason"] == "too_large"


async def test_unknown_object_is_404_and_bad_id_is_404(client: AsyncTestClient) -> None:
    assert_envelope(await client.get(f"/api/v1/data/{uuid.uuid4()}"), 404)
    assert_envelope(await client.get("/api/v1/data/not-a-uuid"), 404)
    assert_envelope(await client.delete(f"/api/v1/data/{uuid.uuid4()}"), 404)


async def test_bad_headers_are_400(client: AsyncTestClient) -> None:
    url = f"/api/v1/data/{uuid.uuid4()}"
    assert_envelope(await client.get(url, headers={"X-Consistency-Token": "soon"}), 400)
    assert_envelope(await client.delete(url, headers={"If-Match": "latest"}), 400)


async def test_confidence_outside_zero_to_one_is_400(client: AsyncTestClient) -> None:
    url = f"/api/v1/data/{uuid.uuid4()}/annotations"
    body = {"annotation_type": "label", "content": "x", "confidence": 1.5}
    assert_envelope(await client.post(url, json=body), 400)


async def test_health_and_docs_answer(client: AsyncTestClient) -> None:
    health = await client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    assert health.headers["x-request-id"]
    docs = await client.get("/api/docs/openapi.json")
    assert docs.status_code == 200
    assert "/api/v1/ingest" in docs.json()["paths"]
