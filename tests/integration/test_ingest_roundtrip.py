"""Ingest -> Kafka -> processor -> events -> projection -> read, through the real broker and database."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from httpx import AsyncClient as AsyncTestClient

from infra.runtime.settings import Settings
from tests.integration.harness import query

pytestmark = pytest.mark.shared_system  # one system for the module's tests

BODY: dict[str, Any] = {
    "content": "The quick brown fox jumps over the lazy dog.",
    "content_type": "text/plain",
    "metadata": {"source": "test", "n": 1},
    "annotations": ["animals", "classic"],
}


async def ingest(client: AsyncTestClient, body: dict | None = None, headers: dict[str, str] | None = None) -> dict:
    response = await client.post("/api/v1/ingest", json=body or BODY, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def test_ingested_object_is_readable_with_its_token(client: AsyncTestClient, settings: Settings) -> None:
    created = await ingest(client)
    assert created["status"] == "success" and created["version"] == 3  # ingested + two labels
    assert created["position"] and created["processing_time_ms"] > 0

    response = await client.get(
        f"/api/v1/data/{created['object_id']}", headers={"X-Consistency-Token": created["position"]}
    )
    assert response.status_code == 200, response.text
    obj = response.json()
    digest = hashlib.sha256(BODY["content"].encode()).hexdigest()
    assert obj["content_hash"] == digest
    assert obj["storage_location"] == f"inline://sha256/{digest}"  # small: carried in the event
    assert (obj["object_type"], obj["size"], obj["metadata"]) == ("text", len(BODY["content"]), BODY["metadata"])
    assert [a["content"] for a in obj["annotations"]] == ["animals", "classic"]
    assert response.headers["etag"] == '"3"'
    assert not (Path(settings.storage.blob_path) / digest[:2] / digest).exists()  # no blob file, no fsync
    content = await client.get(f"/api/v1/data/{created['object_id']}/content")
    assert content.content == BODY["content"].encode()


async def test_token_as_query_parameter_also_waits(client: AsyncTestClient) -> None:
    created = await ingest(client)
    response = await client.get(f"/api/v1/data/{created['object_id']}?consistency_token={created['position']}")
    assert response.status_code == 200
    assert response.json()["version"] == 3


async def test_a_token_no_write_returned_is_refused_at_once(client: AsyncTestClient) -> None:
    created = await ingest(client)
    partition, offset = (int(part) for part in created["position"].split(":"))
    url = f"/api/v1/data/{created['object_id']}"
    for token in (f"{partition}:{offset + 1_000_000}", "99:0"):  # past the log's end; no such partition
        started = time.monotonic()
        response = await client.get(url, headers={"X-Consistency-Token": token})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["reason"] == "invalid_token"
        assert time.monotonic() - started < 5  # not the consistency timeout (15 s in tests)


async def test_same_idempotency_key_twice_appends_one_event(client: AsyncTestClient, settings: Settings) -> None:
    first = await ingest(client, {**BODY, "annotations": []}, headers={"Idempotency-Key": "k-1"})
    again = await client.post("/api/v1/ingest", json={**BODY, "annotations": []}, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 201
    second = again.json()
    assert again.headers.get("idempotent-replayed") == "true"
    assert (second["object_id"], second["version"], second["position"]) == (
        first["object_id"],
        first["version"],
        first["position"],
    )
    await client.get(f"/api/v1/data/{first['object_id']}", headers={"X-Consistency-Token": first["position"]})
    rows = await query(settings, "SELECT count(*) FROM audit_log WHERE aggregate_id = %s", (first["object_id"],))
    assert rows == [(1,)]


async def test_reused_idempotency_key_with_another_body_is_refused(client: AsyncTestClient) -> None:
    await ingest(client, headers={"Idempotency-Key": "k-2"})
    response = await client.post(
        "/api/v1/ingest", json={**BODY, "content": "something else"}, headers={"Idempotency-Key": "k-2"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["reason"] == "idempotency_mismatch"


async def test_stale_if_match_is_409_and_appends_nothing(client: AsyncTestClient, settings: Settings) -> None:
    created = await ingest(client)
    url = f"/api/v1/data/{created['object_id']}"
    note = {"annotation_type": "comment", "content": {"text": "hi"}, "confidence": 0.7}
    ok = await client.post(f"{url}/annotations", json=note, headers={"If-Match": '"3"'})
    assert ok.status_code == 201, ok.text
    assert ok.json()["version"] == 4
    stale = await client.post(f"{url}/annotations", json=note, headers={"If-Match": '"3"'})
    assert stale.status_code == 409
    error = stale.json()["error"]
    assert error["details"] == {"expected_version": 3, "current_version": 4}
    assert error["request_id"] == stale.headers["x-request-id"]
    read = await client.get(url, headers={"X-Consistency-Token": ok.json()["position"]})
    assert read.json()["version"] == 4 and len(read.json()["annotations"]) == 3
    rows = await query(settings, "SELECT count(*) FROM audit_log WHERE aggregate_id = %s", (created["object_id"],))
    assert rows == [(4,)]


async def test_delete_drops_the_object_and_later_commands_are_refused(client: AsyncTestClient) -> None:
    created = await ingest(client)
    url = f"/api/v1/data/{created['object_id']}"
    deleted = await client.delete(url, headers={"If-Match": "3"})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["status"] == "deleted"
    gone = await client.get(url, headers={"X-Consistency-Token": deleted.json()["position"]})
    assert gone.status_code == 404
    assert gone.json()["error"]["reason"] == "not_found"
    again = await client.delete(url)
    assert again.status_code == 410
    note = await client.post(f"{url}/annotations", json={"annotation_type": "t", "content": 1})
    assert note.status_code == 410
