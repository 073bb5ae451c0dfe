"""Replay and evolution: an old-version event replays into the new read models, one read model is rebuilt
alone (its swap leaves the others untouched), and a poison event goes through the dead-letter policy
(dead letter -> list -> fix -> retry; skip) with /health following. One system serves the module; the
tests run in this order (the dead letters of the last one would otherwise differ in a rebuild).
"""

from __future__ import annotations

import asyncio
import io
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from domain.data_object import DataObject
from infra.adapters.kafka import Topics
from infra.runtime.rebuild import rebuild_read_models
from infra.runtime.settings import Settings, load_settings
from tests.conftest import environment_for
from tests.integration.harness import ROOT, event_record, eventually, query, raw_event_record, snapshot_read_models
from tests.integration.system import running_system

# DataObject.Annotated as class_version 1 wrote it: no "source", no "class_version".
ANNOTATED_V1 = {
    "timestamp": {"_type_": "datetime_iso", "_data_": "2026-01-02T03:04:05.678901+00:00"},
    "annotation_id": "v1-annotation",
    "annotation_type": "label",
    "content": "from the old days",
    "confidence": 0.5,
    "annotator": "old-timer",
}


class System:
    def __init__(self, env: dict[str, str], http: httpx.AsyncClient) -> None:
        self.env, self.http = env, http
        self.settings = load_settings(environ=env)
        self.topics = Topics.from_settings(self.settings.kafka)

    async def produce(self, aggregate_id: uuid.UUID, records: list[tuple[bytes, list[tuple[str, bytes]]]]) -> int:
        """Produce records of one aggregate straight onto the events topic; the first one's offset."""
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka.bootstrap_servers)
        await producer.start()
        try:
            offsets = [
                (await producer.send_and_wait(self.topics.events, value, key=str(aggregate_id).encode(), headers=h))
                for value, h in records
            ]
        finally:
            await producer.stop()
        return offsets[0].offset

    async def pipeline(self, *args: str) -> tuple[int, str, str]:
        """Run the `pipeline` CLI (this checkout's) against the system: exit code, stdout, stderr."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "infra.cli",
            *args,
            cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **self.env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    async def health(self) -> dict[str, Any]:
        body: dict[str, Any] = (await self.http.get("/health")).json()
        return body

    async def annotations(self, object_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(f"/api/v1/data/{object_id}")
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["annotations"]
        return found


@pytest.fixture(scope="module")
async def system(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    tmp = tmp_path_factory.mktemp("replay")
    env = {**environment_for(services, tmp), "PIPELINE_RATE_LIMITING_ENABLED": "false"}
    async with running_system(env, tmp) as running:
        yield System(env, running.admin)


async def ingest(system: System, text: str, labels: list[str] | None = None) -> dict[str, Any]:
    body = {"content": text, "content_type": "text/plain", "annotations": labels or []}
    response = await system.http.post("/api/v1/ingest", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    read = await system.http.get(
        f"/api/v1/data/{created['object_id']}", headers={"X-Consistency-Token": created["position"]}
    )
    assert read.status_code == 200, read.text
    return created


async def stored_blob(system: System) -> dict[str, Any]:
    """Content fields naming a blob the store has: those of a new object whose content is over
    storage.event_content_bytes (smaller content travels inline in its event, and an object produced
    with its fields but without the bytes would be a missing blob for /health)."""
    created = await ingest(system, "in the blob store " * 2000)
    row = (await system.http.get(f"/api/v1/data/{created['object_id']}")).json()
    assert not row["storage_location"].startswith("inline://"), row
    return {k: row[k] for k in ("content_type", "content_hash", "size")} | {"location": row["storage_location"]}


async def annotate(system: System, object_id: str, content: Any) -> dict[str, Any]:
    body = {"annotation_type": "comment", "content": content}
    response = await system.http.post(f"/api/v1/data/{object_id}/annotations", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    await system.http.get(f"/api/v1/data/{object_id}", headers={"X-Consistency-Token": created["position"]})
    return created


async def test_annotations_say_who_made_them_and_a_v1_annotation_replays_as_unknown(system: System) -> None:
    created = await ingest(system, "evolving", ["at-ingest"])
    await annotate(system, created["object_id"], "by hand")
    sources = {a["content"]: a["source"] for a in await system.annotations(created["object_id"])}
    assert sources == {"at-ingest": "ingest", "by hand": "user"}

    # An object whose annotation was written by the old code: produced to the log as v1 wrote it.
    old_id = uuid.uuid4()
    obj = DataObject(id=old_id, **await stored_blob(system), metadata={}, owner="old-timer")
    ingested = event_record(old_id, 1, obj.collect_events()[0])
    annotated = raw_event_record(
        old_id, 2, "domain.data_object:DataObject.Annotated", orjson.dumps(ANNOTATED_V1), datetime.now(UTC)
    )
    await system.produce(old_id, [ingested, annotated])

    async def applied() -> list[Any]:
        return await query(
            system.settings, "SELECT source, annotator_id FROM annotations WHERE object_id = %s", (old_id,)
        )

    assert await eventually(applied, timeout=60, what="the v1 annotation to be applied") == [("unknown", "old-timer")]
    assert [a["source"] for a in await system.annotations(str(old_id))] == ["unknown"]
    graphql = await system.http.post(
        "/api/graphql",
        json={"query": f'{{ dataObject(objectId: "{old_id}") {{ annotations {{ source annotatorId }} }} }}'},
    )
    assert graphql.json()["data"]["dataObject"]["annotations"] == [{"source": "unknown", "annotatorId": "old-timer"}]
    # A rebuild reads the old event the same way.
    target = await rebuild_read_models(
        system.settings, into=f"{system.settings.database.schema}_v1", only=["annotations"]
    )
    rebuilt = await query(
        system.settings, "SELECT source FROM annotations WHERE object_id = %s", (old_id,), schema=target
    )
    assert rebuilt == [("unknown",)]


async def test_one_read_model_is_rebuilt_alone_and_its_swap_leaves_the_others_untouched(system: System) -> None:
    created = await ingest(system, "scoped", ["one"])
    await annotate(system, created["object_id"], "two")
    settings: Settings = system.settings

    async def table_ids() -> dict[str, int]:
        rows = await query(
            settings,
            "SELECT relname, oid::bigint FROM pg_class WHERE relnamespace = %s::regnamespace AND relkind = 'r'",
            (settings.database.schema,),
        )
        return dict(rows)

    before_ids, before = await table_ids(), await snapshot_read_models(settings)
    # Without --swap: a schema where only the named read model is built.
    progress = io.StringIO()
    into = await rebuild_read_models(
        settings, into=f"{settings.database.schema}_only", only=["annotations"], progress=progress
    )
    assert (await snapshot_read_models(settings, schema=into))["annotations"] == before["annotations"]
    assert await query(settings, "SELECT count(*) FROM data_objects", schema=into) == [(0,)]
    lines = progress.getvalue().splitlines()  # not a TTY: plain lines, the last one complete
    assert lines and "100.0%" in lines[-1] and "events/s" in lines[-1] and "ETA" in lines[-1], lines

    await rebuild_read_models(settings, swap=True, only=["annotations"], progress=io.StringIO())
    after_ids = await table_ids()
    assert after_ids["annotations"] != before_ids["annotations"]  # replaced...
    assert {t: i for t, i in after_ids.items() if t != "annotations"} == {
        t: i for t, i in before_ids.items() if t != "annotations"
    }  # ...and nothing else
    assert await snapshot_read_models(settings) == before
    # The live runner goes on writing into the swapped-in table.
    note = await annotate(system, created["object_id"], "after the swap")
    assert note["annotation_id"] in {a["annotation_id"] for a in await system.annotations(created["object_id"])}


async def test_a_poison_event_is_dead_lettered_listed_retried_after_the_fix_or_skipped(system: System) -> None:
    assert (await system.health())["status"] == "healthy"
    # Poison 1: an annotation whose id another object's annotation already has (a unique violation).
    holder = await ingest(system, "holds the id")
    taken = await annotate(system, holder["object_id"], "first")
    victim = uuid.uuid4()
    obj = DataObject(id=victim, **await stored_blob(system), metadata={}, owner="p")
    obj.annotate(taken["annotation_id"], "comment", "second", 1.0, "p", "user")
    ingested, annotated = obj.collect_events()
    offset = await system.produce(victim, [event_record(victim, 1, ingested), event_record(victim, 2, annotated)]) + 1

    async def letter() -> dict[str, Any] | None:
        code, out, _ = await system.pipeline("dlq", "list", "--json")
        assert code == 0
        letters = [orjson.loads(line) for line in out.splitlines()]
        return next((x for x in letters if x["topic_offset"] == offset), None)

    found = await eventually(letter, timeout=60, what="the poison annotation to be dead-lettered")
    assert "UniqueViolation" in found["reason"] and found["resolution"] is None
    health = await eventually(lambda: _health_with(system, "degraded"), timeout=10, what="/health to say degraded")
    assert health["dead_letters"]["projections"] == 1

    code, _, err = await system.pipeline("dlq", "retry", str(found["id"]))
    assert code == 1 and "still not applied" in err, err  # the cause is still there: nothing changes
    # The fix: the holder of the id is deleted (its annotations go with it); then the retry applies it.
    deleted = await system.http.delete(f"/api/v1/data/{holder['object_id']}")
    await system.http.get("/api/v1/data/" + str(victim), headers={"X-Consistency-Token": deleted.json()["position"]})
    code, out, err = await system.pipeline("dlq", "retry", str(found["id"]))
    assert code == 0, err
    assert [a["content"] for a in await system.annotations(str(victim))] == ["second"]
    assert await query(system.settings, "SELECT version FROM data_objects WHERE object_id = %s", (victim,)) == [(2,)]
    await eventually(lambda: _health_with(system, "healthy"), timeout=10, what="/health to be healthy again")

    # Poison 2: an object the read model cannot store (NUL), deleted after: its letter is stale.
    stale = uuid.uuid4()
    obj = DataObject(
        id=stale, content_type="text/plain\x00", content_hash="0" * 64, size=1, location="x", metadata={}, owner="p"
    )
    obj.delete("p")
    first, second = obj.collect_events()
    offset = await system.produce(stale, [event_record(stale, 1, first), event_record(stale, 2, second)])
    found = await eventually(letter, timeout=60, what="the NUL content type to be dead-lettered")
    code, _, err = await system.pipeline("dlq", "retry", str(found["id"]))
    assert code == 1 and "moved on to version 2" in err, err  # gating: it would reorder the object's events
    code, _, err = await system.pipeline("dlq", "skip", str(found["id"]), "--note", "bad content type")
    assert code == 0, err
    code, out, _ = await system.pipeline("dlq", "list", "--all", "--json")
    resolutions = {orjson.loads(line)["resolution"] for line in out.splitlines()}
    assert resolutions == {"retried: applied", "skipped: bad content type"}
    code, out, _ = await system.pipeline("dlq", "list")
    assert code == 0 and out == ""
    await eventually(lambda: _health_with(system, "healthy"), timeout=10, what="/health to be healthy again")
    assert (await system.pipeline("dlq", "skip", str(found["id"])))[0] == 1  # already resolved


async def _health_with(system: System, status: str) -> dict[str, Any] | None:
    body = await system.health()
    return body if body["status"] == status else None
