"""Audit: history per aggregate and across aggregates, objects as of a past point, verify and export.

One running system for the module (real Kafka, PostgreSQL, Redis, workers and API as processes). Each
test makes its own objects and users, so the tests do not depend on each other's data.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from httpx import AsyncClient

from infra.adapters.kafka import Topics
from infra.adapters.postgres import connection_kwargs
from infra.runtime.settings import Settings, load_settings
from projections.audit_log import AuditLogProjector
from projections.events import EventRecord
from tests.conftest import environment_for
from tests.integration.harness import ROOT, eventually, query
from tests.integration.system import RunningSystem, running_system
from tests.integration.users import client_for, create_user

GQL = "/api/graphql"
TIME_FIELDS = ("created_at", "updated_at")


@pytest.fixture(scope="module")
async def system(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningSystem]:
    tmp_path: Path = tmp_path_factory.mktemp("audit")
    async with running_system(environment_for(services, tmp_path), tmp_path) as running:
        yield running


@pytest.fixture
def settings(system: RunningSystem) -> Settings:
    return load_settings(environ=system.env)


async def user_client(system: RunningSystem) -> tuple[AsyncClient, str]:
    """A new user's client and user id."""
    name = f"u{uuid.uuid4().hex[:10]}"
    created = await create_user(system.admin, name)
    return await client_for(system.anonymous, name), created["user_id"]


async def ingest(client: AsyncClient, content: str, labels: list[str] | None = None) -> dict[str, Any]:
    body = {"content": content, "content_type": "text/plain", "metadata": {"k": content}, "annotations": labels or []}
    response = await client.post("/api/v1/ingest", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def annotate(client: AsyncClient, object_id: str, score: float) -> dict[str, Any]:
    body = {"annotation_type": "sentiment", "content": {"score": score}, "confidence": 0.5}
    response = await client.post(f"/api/v1/data/{object_id}/annotations", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def read(client: AsyncClient, object_id: str, position: str | None = None, **params: Any) -> dict[str, Any]:
    headers = {"X-Consistency-Token": position} if position else {}
    response = await client.get(f"/api/v1/data/{object_id}", headers=headers, params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def history(client: AsyncClient, aggregate_id: str, position: str | None = None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        headers = {"X-Consistency-Token": position} if position else {}
        response = await client.get(f"/api/v1/audit/{aggregate_id}", params=params, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        events += page["events"]
        after = page["next_cursor"]
        if after is None:
            return events


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal objects; times compared as instants (PostgreSQL and the events may print zones differently)."""

    def normal(obj: dict[str, Any]) -> dict[str, Any]:
        out = {k: (datetime.fromisoformat(v) if k in TIME_FIELDS else v) for k, v in obj.items()}
        out["annotations"] = [
            {**n, "created_at": datetime.fromisoformat(n["created_at"])} for n in obj.get("annotations", [])
        ]
        return out

    return normal(a) == normal(b)


async def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra.cli",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=300)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_history_lists_an_objects_events_in_order_with_their_chain(system: RunningSystem) -> None:
    client, user_id = await user_client(system)
    async with client:
        created = await ingest(client, "history one", labels=["first"])
        await annotate(client, created["object_id"], 0.1)
        deleted = await client.delete(f"/api/v1/data/{created['object_id']}")
        assert deleted.status_code == 200, deleted.text
        events = await history(client, created["object_id"], deleted.json()["position"])

        types = [e["event_type"] for e in events]
        assert types == ["DataObject.Ingested", "DataObject.Annotated", "DataObject.Annotated", "DataObject.Deleted"]
        assert [e["version"] for e in events] == [1, 2, 3, 4]
        assert events[0]["prev_hash"] == "" and all(len(e["hash"]) == 64 for e in events)
        assert all(later["prev_hash"] == earlier["hash"] for earlier, later in itertools.pairwise(events))
        assert {e["actor"] for e in events} == {user_id} and {e["actor_role"] for e in events} == {"user"}
        assert events[0]["command_id"] == events[1]["command_id"] != events[2]["command_id"]
        assert all(e["causation_id"] == e["command_id"] and e["correlation_id"] for e in events)
        assert all(e["aggregate_type"] == "DataObject" and e["aggregate_id"] == created["object_id"] for e in events)
        ingested = events[0]["data"]
        assert ingested["owner"] == user_id and len(ingested["content_hash"]) == 64 and ingested["location"]
        assert "content" not in ingested and "history one" not in json.dumps(ingested["metadata"] | {"k": ""})
        assert events[2]["data"]["content"] == {"score": 0.1} and events[3]["data"] == {"deleted_by": user_id}
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs)

        gql = """query($id: String!, $after: String) { history(aggregateId: $id, first: 3, after: $after) {
            edges { cursor node { version eventType hash prevHash data } } pageInfo { hasNextPage endCursor } } }"""
        first = (await client.post(GQL, json={"query": gql, "variables": {"id": created["object_id"]}})).json()
        connection = first["data"]["history"]
        assert [edge["node"]["version"] for edge in connection["edges"]] == [1, 2, 3]
        assert connection["pageInfo"] == {"hasNextPage": True, "endCursor": "3"}
        variables = {"id": created["object_id"], "after": "3"}
        rest = (await client.post(GQL, json={"query": gql, "variables": variables})).json()["data"]["history"]
        assert [edge["node"]["eventType"] for edge in rest["edges"]] == ["DataObject.Deleted"]
        assert rest["pageInfo"]["hasNextPage"] is False and rest["edges"][0]["node"]["hash"] == events[3]["hash"]


async def test_history_is_for_its_owner_and_admins(system: RunningSystem) -> None:
    owner, owner_id = await user_client(system)
    other, _ = await user_client(system)
    async with owner, other:
        created = await ingest(owner, "rights")
        await read(owner, created["object_id"], created["position"])
        assert (await owner.get(f"/api/v1/audit/{created['object_id']}")).status_code == 200
        refused = await other.get(f"/api/v1/audit/{created['object_id']}")
        assert refused.status_code == 404 and refused.json()["error"]["reason"] == "not_found"
        assert (await other.get(f"/api/v1/audit/{uuid.uuid4()}")).status_code == 404
        admin_view = await system.admin.get(f"/api/v1/audit/{created['object_id']}")
        assert admin_view.status_code == 200 and len(admin_view.json()["events"]) == 1
        # a user reads their own user aggregate's history; others do not
        mine = await owner.get(f"/api/v1/audit/{owner_id}")
        assert mine.status_code == 200 and mine.json()["events"][0]["event_type"] == "User.Registered"
        assert (await other.get(f"/api/v1/audit/{owner_id}")).status_code == 404
        gql = "query($id: String!) { history(aggregateId: $id) { edges { cursor } } }"
        variables = {"id": created["object_id"]}
        errors = (await other.post(GQL, json={"query": gql, "variables": variables})).json()["errors"]
        assert errors[0]["extensions"]["code"] == 404
        # across aggregates: admins only
        assert (await owner.get("/api/v1/audit")).status_code == 403


async def test_object_as_of_equals_its_state_at_each_point(system: RunningSystem) -> None:
    client, _ = await user_client(system)
    other, _ = await user_client(system)
    async with client, other:
        created = await ingest(client, "as of", labels=["initial"])
        object_id = created["object_id"]
        states = [await read(client, object_id, created["position"])]
        for score in (0.2, 0.3):
            added = await annotate(client, object_id, score)
            states.append(await read(client, object_id, added["position"]))
        assert [s["version"] for s in states] == [2, 3, 4]

        for state in states:
            by_version = await read(client, object_id, as_of=str(state["version"]))
            by_time = await read(client, object_id, as_of=state["updated_at"])
            assert same_state(by_version, state) and same_state(by_time, state), (by_version, state)
        admin_view = await read(system.admin, object_id, as_of="3")
        assert same_state(admin_view, states[1])
        assert (await other.get(f"/api/v1/data/{object_id}", params={"as_of": "3"})).status_code == 404

        before_creation = datetime.fromisoformat(states[0]["created_at"]) - timedelta(seconds=1)
        missing = await client.get(f"/api/v1/data/{object_id}", params={"as_of": before_creation.isoformat()})
        assert missing.status_code == 404
        assert (await client.get(f"/api/v1/data/{object_id}", params={"as_of": "5"})).status_code == 404

        deleted = await client.delete(f"/api/v1/data/{object_id}")
        assert deleted.status_code == 200
        await history(client, object_id, deleted.json()["position"])
        assert (await client.get(f"/api/v1/data/{object_id}")).status_code == 404
        before_deletion = await read(client, object_id, as_of=states[-1]["updated_at"])
        assert same_state(before_deletion, states[-1])
        after = await client.get(f"/api/v1/data/{object_id}", params={"as_of": datetime.now().astimezone().isoformat()})
        assert after.status_code == 404
        assert (await client.get(f"/api/v1/data/{object_id}", params={"as_of": "5"})).status_code == 404
        assert (await other.get(f"/api/v1/data/{object_id}", params={"as_of": "4"})).status_code == 404

        gql = """query($id: String!, $at: String) { dataObject(objectId: $id, asOf: $at) {
            version content metadata annotations { annotationType content } } }"""
        answer = (await client.post(GQL, json={"query": gql, "variables": {"id": object_id, "at": "3"}})).json()
        node = answer["data"]["dataObject"]
        assert node["version"] == 3 and node["content"] == "as of" and node["metadata"] == {"k": "as of"}
        assert [a["content"] for a in node["annotations"]] == ["initial", {"score": 0.2}]
        gone = (await client.post(GQL, json={"query": gql, "variables": {"id": object_id, "at": "5"}})).json()
        assert gone["data"]["dataObject"] is None


async def test_events_across_aggregates_are_filtered_and_paged_for_admins(system: RunningSystem) -> None:
    client, user_id = await user_client(system)
    async with client:
        started = datetime.now().astimezone()
        first = await ingest(client, "across one")
        second = await ingest(client, "across two")
        added = await annotate(client, first["object_id"], 0.7)
        await read(client, first["object_id"], added["position"])
        await read(client, second["object_id"], second["position"])

        async def pages(**params: Any) -> list[dict[str, Any]]:
            events, after = [], None
            while True:
                page_params = {**params, "limit": 1, **({"after": after} if after else {})}
                response = await system.admin.get("/api/v1/audit", params=page_params)
                assert response.status_code == 200, response.text
                events += response.json()["events"]
                after = response.json()["next_cursor"]
                if after is None:
                    return events

        mine = await pages(actor=user_id)
        assert [(e["aggregate_id"], e["event_type"]) for e in mine] == [
            (first["object_id"], "DataObject.Ingested"),
            (second["object_id"], "DataObject.Ingested"),
            (first["object_id"], "DataObject.Annotated"),
        ]
        assert [e["seq"] for e in mine] == sorted(e["seq"] for e in mine)
        annotated = await pages(actor=user_id, type="DataObject.Annotated")
        assert [e["aggregate_id"] for e in annotated] == [first["object_id"]]
        registered = [e for e in await pages(aggregate_type="User") if e["aggregate_id"] == user_id]
        assert [e["event_type"] for e in registered] == ["User.Registered"]
        window = await pages(actor=user_id, **{"from": started.isoformat(), "to": mine[1]["timestamp"]})
        assert [e["event_id"] for e in window] == [mine[0]["event_id"]]


async def test_metadata_shaped_like_the_codecs_tags_is_kept_as_written(system: RunningSystem) -> None:
    """Metadata can be any JSON, including dicts shaped like the event codec's own type tags."""
    metadata = {
        "when": {"_type_": "datetime_iso", "_data_": "not a time"},
        "id": {"_type_": "uuid_hex", "_data_": "0" * 32},
        "list": [{"_type_": "dict", "_data_": {}}],
    }
    client, _ = await user_client(system)
    async with client:
        body = {"content": "tag shaped", "content_type": "text/plain", "metadata": metadata}
        created = await client.post("/api/v1/ingest", json=body)
        assert created.status_code == 201, created.text
        object_id, token = created.json()["object_id"], created.json()["position"]
        read = await client.get(f"/api/v1/data/{object_id}", headers={"X-Consistency-Token": token})
        assert read.status_code == 200 and read.json()["metadata"] == metadata, read.text
        as_of = await client.get(f"/api/v1/data/{object_id}", params={"as_of": "1"})
        assert as_of.status_code == 200 and as_of.json()["metadata"] == metadata, as_of.text
        events = await history(client, object_id, token)
        assert events[0]["data"]["metadata"] == metadata
    health = await system.anonymous.get("/health")
    assert health.json()["status"] == "healthy" and health.json()["dead_letters"]["projections"] == 0, health.text


def fake_event(partition: int) -> EventRecord:
    """An audit row's worth of event, never committed (the test rolls its transactions back)."""
    headers = {
        name: uuid.uuid4().hex
        for name in ("event_id", "command_id", "correlation_id", "causation_id", "actor", "prev_hash", "hash")
    }
    return EventRecord(
        partition=partition,
        offset=10**12,
        aggregate_id=str(uuid.uuid4()),
        version=1,
        topic="domain.data_object:DataObject.Deleted",
        type="DataObject.Deleted",
        headers=headers | {"actor_role": "admin"},
        state=b"{}",
        event=SimpleNamespace(timestamp=datetime.now(UTC)),
    )


async def test_audit_rows_become_visible_in_sequence_order(system: RunningSystem, settings: Settings) -> None:
    """Two partitions' transactions number their rows one at a time, so paging by seq never skips a row.

    The first holds its rows uncommitted; the second must wait for it, not take numbers and commit
    first (a reader would then page past the first's lower numbers before they were visible).
    """
    kwargs: Any = connection_kwargs(settings.database.schema)
    async with (
        await psycopg.AsyncConnection.connect(settings.database.url, **kwargs) as first,
        await psycopg.AsyncConnection.connect(settings.database.url, **kwargs) as second,
    ):
        projector = AuditLogProjector()
        async with first.cursor() as cur:
            await projector.apply_many(cur, [fake_event(0)])
            await cur.execute("SELECT max(seq) FROM audit_log")
            first_seq = (await cur.fetchone() or [0])[0]

        async def write_second() -> int:
            async with second.cursor() as cur:
                await projector.apply_many(cur, [fake_event(1)])
                await cur.execute("SELECT max(seq) FROM audit_log")
                return int((await cur.fetchone() or [0])[0])

        waiting = asyncio.create_task(write_second())
        await asyncio.sleep(1.0)
        assert not waiting.done(), "the second transaction numbered its rows while the first was open"
        await first.rollback()
        assert await asyncio.wait_for(waiting, 30) > first_seq
        await second.rollback()


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/audit", {"after": "abc"}),
        ("/api/v1/audit", {"after": "-1"}),
        ("/api/v1/audit", {"from": "yesterday"}),
        ("/api/v1/audit", {"from": "2026-01-01T00:00:00"}),
        ("/api/v1/audit", {"to": "2026-01-01"}),
        ("/api/v1/audit", {"to": ""}),
        ("/api/v1/audit", {"actor": ""}),
        ("/api/v1/audit", {"after": ""}),
        ("/api/v1/audit", {"actor": "not-a-uuid"}),
        ("/api/v1/audit", {"type": "a b"}),
        ("/api/v1/audit", {"type": "Daten\u00f6bjekt"}),  # a letter, but not one the documented pattern allows
        ("/api/v1/audit", {"aggregate_type": "DataObject\n"}),
        ("/api/v1/audit", {"limit": "0"}),
        ("/api/v1/audit", {"limit": "many"}),
        ("/api/v1/audit/{id}", {"after": "x"}),
        ("/api/v1/audit/{id}", {"limit": "501"}),
        ("/api/v1/data/{id}", {"as_of": "soon"}),
        ("/api/v1/data/{id}", {"as_of": "0"}),
        ("/api/v1/data/{id}", {"as_of": "2026-12-01T10:00:00"}),
        ("/api/v1/data/{id}", {"as_of": "99999999999"}),
    ],
)
async def test_bad_parameters_are_400s(system: RunningSystem, path: str, params: dict[str, str]) -> None:
    created = await ingest(system.admin, "bad params")
    await read(system.admin, created["object_id"], created["position"])
    response = await system.admin.get(path.format(id=created["object_id"]), params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == 400


@pytest.mark.parametrize("params", [{"type": "_"}, {"aggregate_type": "."}, {"type": "x" * 200}])
async def test_every_filter_the_documented_pattern_allows_is_accepted(
    system: RunningSystem, params: dict[str, str]
) -> None:
    # What the OpenAPI document allows (schemathesis drew type=_) must not be a 400.
    response = await system.admin.get("/api/v1/audit", params=params)
    assert response.status_code == 200, response.text


async def test_export_writes_one_line_per_event(system: RunningSystem, tmp_path: Path) -> None:
    created = await ingest(system.admin, "export me", labels=["x", "y"])
    events = await history(system.admin, created["object_id"], created["position"])
    output = tmp_path / "events.jsonl"
    args = ["--aggregate", created["object_id"], "--output", str(output)]
    code, out, err = await cli(system.env, "audit", "export", *args)
    assert code == 0, err
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(e["event_id"], e["version"], e["hash"], e["data"]) for e in lines] == [
        (e["event_id"], e["version"], e["hash"], e["data"]) for e in events
    ]
    assert "exported 3 events" in out and "export: 3/3" in err

    everything = tmp_path / "all.jsonl"
    since = events[1]["timestamp"]
    code, _, err = await cli(system.env, "audit", "export", "--from", since, "--output", str(everything))
    assert code == 0, err
    exported = [json.loads(line) for line in everything.read_text().splitlines()]
    assert exported[0]["event_id"] == events[1]["event_id"]
    assert all(datetime.fromisoformat(e["timestamp"]) >= datetime.fromisoformat(since) for e in exported)
    assert [e["seq"] for e in exported] == sorted(e["seq"] for e in exported)
    code, _, err = await cli(system.env, "audit", "export", "--from", "not a time", "--output", str(everything))
    assert code == 2 and "RFC 3339" in err


async def test_verify_passes_on_a_clean_log_and_names_forged_and_tampered_events(
    system: RunningSystem, settings: Settings
) -> None:
    forged_object = await ingest(system.admin, "will be forged")
    tampered_object = await ingest(system.admin, "will be tampered", labels=["a"])
    await read(system.admin, forged_object["object_id"], forged_object["position"])
    await read(system.admin, tampered_object["object_id"], tampered_object["position"])

    code, out, err = await cli(system.env, "audit", "verify", "--json")
    assert code == 0, out + err
    summary = json.loads(out.splitlines()[-1])
    logged = (await query(settings, "SELECT count(*), count(DISTINCT aggregate_id) FROM audit_log"))[0]
    assert summary["intact"] is True and summary["broken"] == 0
    assert summary["events"] >= logged[0] and summary["aggregates"] >= logged[1] and summary["events_per_s"] > 0
    assert "verify (log offsets)" in err and "summary: INTACT" in out

    # A forged event: the next version of an object, produced straight to the topic, chained to nothing.
    object_id = forged_object["object_id"]
    sql = "SELECT topic_partition, topic_offset FROM audit_log WHERE aggregate_id = %s"
    partition, offset = (await query(settings, sql, (object_id,)))[0]
    now = datetime.now().astimezone().isoformat()
    state = json.dumps({"timestamp": {"_type_": "datetime_iso", "_data_": now}, "deleted_by": "someone"}).encode()
    headers = {
        "event_id": uuid.uuid4().hex,
        "event_type": "domain.data_object:DataObject.Deleted",
        "schema_version": "1",
        "aggregate_id": object_id,
        "aggregate_version": "2",
        "command_id": str(uuid.uuid4()),
        "correlation_id": str(uuid.uuid4()),
        "causation_id": str(uuid.uuid4()),
        "actor": "someone",
        "actor_role": "admin",
        "timestamp": now,
        "prev_hash": "0" * 64,
        "hash": "1" * 64,
    }
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        sent = await producer.send_and_wait(
            Topics.from_settings(settings.kafka).events,
            state,
            key=object_id.encode(),
            partition=partition,
            headers=[(k, v.encode()) for k, v in headers.items()],
        )
    finally:
        await producer.stop()

    async def forged_applied() -> bool:
        rows = await query(settings, "SELECT count(*) FROM audit_log WHERE aggregate_id = %s", (object_id,))
        return bool(rows[0][0] == 2)

    await eventually(forged_applied, what="the projection to apply the forged event")
    # A tampered audit row: the read model no longer says what the log says.
    await query(
        settings,
        "UPDATE audit_log SET payload = jsonb_set(payload, '{metadata}', '{\"k\": \"edited\"}') WHERE aggregate_id = %s"
        " AND aggregate_version = 1 RETURNING seq",
        (tampered_object["object_id"],),
    )

    code, out, err = await cli(system.env, "audit", "verify", "--json")
    assert code == 1, out + err
    summary = json.loads(out.splitlines()[-1])
    assert summary["intact"] is False and summary["broken"] == 1
    assert summary["broken_links"] == [
        {
            "aggregate_id": object_id,
            "partition": partition,
            "offset": sent.offset,
            "version": 2,
            "reason": "prev_hash is not the hash of version 1",
        }
    ]
    different = [m for m in summary["mismatches"] if m["kind"] == "different"]
    assert different == [
        {
            "kind": "different",
            "partition": (
                await query(
                    settings,
                    "SELECT topic_partition FROM audit_log WHERE aggregate_id = %s AND aggregate_version = 1",
                    (tampered_object["object_id"],),
                )
            )[0][0],
            "offset": different[0]["offset"],
            "aggregate_id": tampered_object["object_id"],
            "version": 1,
            "detail": "differs in payload",
        }
    ]
    assert summary["read_model"]["missing"] == 0 and summary["read_model"]["extra"] == 0
    assert f"broken: aggregate {object_id} at partition {partition} offset {sent.offset}" in out
    assert offset < sent.offset

    # One aggregate alone: an intact one passes, the forged one does not.
    clean = await cli(system.env, "audit", "verify", "--aggregate", forged_object["object_id"], "--no-read-model")
    assert clean[0] == 1
    other = await cli(system.env, "audit", "verify", "--aggregate", tampered_object["object_id"], "--no-read-model")
    assert other[0] == 0, other
