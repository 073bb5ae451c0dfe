"""A read model rebuilt from offset 0 equals the live one, and can replace it while the API serves."""

from __future__ import annotations

import httpx
import pytest

from infra.runtime.rebuild import rebuild_read_models
from infra.runtime.settings import Settings
from tests.integration.harness import query, snapshot_read_models

# One system for the module (not the session's: a swap replaces its read models).
pytestmark = pytest.mark.shared_system(scope="module")


async def write_some_history(client: httpx.AsyncClient) -> str:
    """Ingests, annotations and a delete; returns the last position token."""
    token = ""
    ids = []
    for i in range(12):
        body = {"content": f"text {i}", "content_type": "text/plain", "annotations": [f"tag{i}"]}
        response = await client.post("/api/v1/ingest", json=body)
        assert response.status_code == 201, response.text
        ids.append(response.json()["object_id"])
    for object_id in ids[:6]:
        note = {"annotation_type": "comment", "content": {"by": "test"}, "confidence": 0.25}
        response = await client.post(f"/api/v1/data/{object_id}/annotations", json=note)
        assert response.status_code == 201, response.text
    for object_id in ids[:3]:
        response = await client.delete(f"/api/v1/data/{object_id}")
        assert response.status_code == 200, response.text
        token = response.json()["position"]
    await client.get(f"/api/v1/data/{ids[-1]}", headers={"X-Consistency-Token": token})
    return ids[-1]


async def test_rebuild_from_offset_zero_equals_the_live_read_models(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    earlier = await snapshot_read_models(settings)  # the module's tests share one system
    last = await write_some_history(client)
    response = await client.get(f"/api/v1/data/{last}")
    assert response.status_code == 200
    target = await rebuild_read_models(settings, into=f"{settings.database.schema}_rb")
    live, rebuilt = await snapshot_read_models(settings), await snapshot_read_models(settings, schema=target)
    assert live == rebuilt
    assert len(live["data_objects"]) - len(earlier["data_objects"]) == 9
    assert len(live["annotations"]) - len(earlier["annotations"]) == 9 + 6 - 3 - 3 + 3
    # Autovacuum, off while the rebuild filled its tables, is back on, and each table was analyzed.
    tables = await query(
        settings,
        "SELECT c.relname, c.reloptions, s.last_analyze IS NOT NULL FROM pg_class c"
        " JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE s.schemaname = %s",
        (target,),
    )
    assert len(tables) > 10 and all(options is None and analyzed for _, options, analyzed in tables), tables
    # The secondary indexes it built after the fill (and those it kept) are the live schema's, one for one.
    indexes = (
        "SELECT indexname, replace(indexdef, schemaname || '.', '') FROM pg_indexes WHERE schemaname = %s"
        " AND tablename IN (SELECT tablename FROM pg_tables WHERE schemaname = %s) ORDER BY indexname"
    )
    built = await query(settings, indexes, (target, target))
    assert len(built) > 20 and ("data_objects_search",) in {(name,) for name, _ in built}
    assert built == await query(settings, indexes, (settings.database.schema, target))
    # And its constraints: the unique one it dropped for the fill (Projector.fill_deferred_constraints) is
    # back, on its index of the same name.
    constraints = (
        "SELECT c.conname, replace(pg_get_constraintdef(c.oid), n.nspname || '.', ''), i.relname FROM pg_constraint c"
        " JOIN pg_namespace n ON n.oid = c.connamespace JOIN pg_class t ON t.oid = c.conrelid"
        " LEFT JOIN pg_class i ON i.oid = c.conindid WHERE n.nspname = %s"
        " AND t.relname IN (SELECT tablename FROM pg_tables WHERE schemaname = %s) ORDER BY c.conname"
    )
    kept = await query(settings, constraints, (target, target))
    deferred = "audit_log_aggregate_id_aggregate_version_key"
    assert (deferred, "UNIQUE (aggregate_id, aggregate_version)", deferred) in kept
    assert kept == await query(settings, constraints, (settings.database.schema, target))


async def test_rebuild_with_swap_replaces_the_live_schema_and_the_api_keeps_serving(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    earlier = await query(settings, "SELECT count(*) FROM data_objects")  # the module's tests share one system
    await write_some_history(client)
    before = await snapshot_read_models(settings)
    await rebuild_read_models(settings, swap=True)
    assert await snapshot_read_models(settings) == before
    # Writes after the swap land in the new live schema, and reads see them.
    response = await client.post("/api/v1/ingest", json={"content": "after", "content_type": "text/plain"})
    assert response.status_code == 201
    created = response.json()
    read = await client.get(
        f"/api/v1/data/{created['object_id']}", headers={"X-Consistency-Token": created["position"]}
    )
    assert read.status_code == 200, read.text
    rows = await query(settings, "SELECT count(*) FROM data_objects")
    assert rows == [(earlier[0][0] + 10,)]
