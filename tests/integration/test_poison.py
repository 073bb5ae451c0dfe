"""No single request or record stops the pipeline.

Poison input over REST, GraphQL and WebSocket answers 4xx (never 500); poison events produced straight
onto the events topic are dead-lettered by the projection runner; poison commands produced straight
onto the commands topic are rejected by the processor. After each, a normal ingest on EVERY partition
is readable with its consistency token. One system (workers, API) serves the whole module.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import websockets
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from domain.data_object import DataObject
from infra.adapters.kafka import Topics
from infra.runtime.settings import Settings, load_settings
from tests.conftest import environment_for
from tests.integration.harness import event_record, eventually, query
from tests.integration.system import running_system

GQL = "/api/graphql"


class System:
    def __init__(self, settings: Settings, http: httpx.AsyncClient, api: httpx.AsyncClient) -> None:
        self.settings, self.http, self.api = settings, http, api
        self.topics = Topics.from_settings(settings.kafka)
        self.bootstrap = settings.kafka.bootstrap_servers


@pytest.fixture(scope="module")
async def system(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    tmp = tmp_path_factory.mktemp("poison")
    env = {**environment_for(services, tmp), "PIPELINE_RATE_LIMITING_ENABLED": "false"}
    async with running_system(env, tmp) as running:
        yield System(load_settings(environ=env), running.admin, running.anonymous)


def assert_4xx_envelope(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    if status is not None:
        assert response.status_code == status, response.text[:500]
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == response.status_code
    assert error["request_id"] == response.headers["x-request-id"]
    return error


async def readable_on_every_partition(system: System, label: str) -> None:
    """Ingest until both partitions got an object; each is readable with its token within seconds."""
    for object_id, position in (await ingest_on_every_partition(system, label)).values():
        started = time.monotonic()
        read = await system.http.get(f"/api/v1/data/{object_id}", headers={"X-Consistency-Token": position})
        assert read.status_code == 200, read.text
        assert time.monotonic() - started < 10


def nested_json(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


INGEST = "/api/v1/ingest"
REST_POISON: list[tuple[str, dict[str, Any] | bytes, int]] = [
    ("nul in content", {"content": "hello\u0000world", "content_type": "text/plain"}, 400),
    ("nul in metadata", {"content": "x", "content_type": "text/plain", "metadata": {"a": "b\u0000"}}, 400),
    ("nul in a metadata key", {"content": "x", "content_type": "text/plain", "metadata": {"a\u0000": 1}}, 400),
    ("int 2^64", {"content": "x", "content_type": "text/plain", "metadata": {"n": 2**64}}, 400),
    ("int below int64", {"content": "x", "content_type": "text/plain", "metadata": {"n": -(2**63) - 1}}, 400),
    ("nested 300", ('{"content":"x","content_type":"text/plain","metadata":' + nested_json(300) + "}").encode(), 400),
    ("nested 5000", ('{"content":"x","content_type":"text/plain","metadata":' + nested_json(5000) + "}").encode(), 400),
    ("invalid utf-8", b'{"content": "\xff\xfe", "content_type": "text/plain"}', 400),
    ("markup content type", {"content": "x", "content_type": "<b>/x"}, 400),
    ("empty label", {"content": "x", "content_type": "text/plain", "annotations": [""]}, 400),
    ("5000-char label", {"content": "x", "content_type": "text/plain", "annotations": ["x" * 5000]}, 400),
    ("huge metadata key", {"content": "x", "content_type": "text/plain", "metadata": {"k" * 1000: 1}}, 400),
]


@pytest.mark.parametrize(("case", "body", "status"), REST_POISON, ids=[c[0] for c in REST_POISON])
async def test_poison_ingest_over_rest_is_4xx(system: System, case: str, body: Any, status: int) -> None:
    if isinstance(body, bytes):
        response = await system.http.post(INGEST, content=body, headers={"Content-Type": "application/json"})
    else:
        response = await system.http.post(INGEST, json=body)
    error = assert_4xx_envelope(response, status)
    if case.startswith("nul"):
        assert "NUL" in error["message"] or "x00" in json.dumps(error), error


async def test_poison_annotations_executions_and_logins_over_rest_are_4xx(system: System) -> None:
    created = await system.http.post(INGEST, json={"content": "target", "content_type": "text/plain"})
    url = f"/api/v1/data/{created.json()['object_id']}/annotations"
    for body in (
        {"annotation_type": "label", "content": {"t": "a\u0000"}},
        {"annotation_type": "", "content": 1},
        {"annotation_type": "x" * 5000, "content": 1},
        {"annotation_type": "<script>", "content": 1},
        {"annotation_type": "label", "content": 2**64},
    ):
        assert_4xx_envelope(await system.http.post(url, json=body), 400)
    execute = "/api/v1/execute"
    graph = {"nodes": [{"id": "in", "type": "input", "params": {"name": "x"}}], "edges": []}
    huge = {"graph": graph, "inputs": {}, "options": {"blob": "x" * 950_000}}
    error = assert_4xx_envelope(await system.http.post(execute, json=huge), 413)
    assert error["reason"] == "too_large"
    deep = ('{"graph":{"nodes":[],"edges":[]},"inputs":' + nested_json(300) + "}").encode()
    headers = {"Content-Type": "application/json"}
    assert_4xx_envelope(await system.http.post(execute, content=deep, headers=headers), 400)
    nul_graph = {"graph": {"nodes": [{"id": "a\u0000", "type": "input"}], "edges": []}}
    assert_4xx_envelope(await system.http.post(execute, json=nul_graph), 400)
    login_nul = {"username": "admin\u0000", "password": "whatever"}
    assert_4xx_envelope(await system.api.post("/api/v1/auth/login", json=login_nul), 400)


async def test_odd_headers_never_answer_500(system: System) -> None:
    health = await system.http.get("/health", headers={b"X-Request-ID": b"\xff\xfe-id"})
    assert health.status_code == 200
    assert health.headers["x-request-id"] != "\xff\xfe-id"
    odd = {b"X-Request-ID": b"\xc3\x28", b"X-Correlation-ID": b"\xff", b"Idempotency-Key": b"\xff\xfe"}
    response = await system.http.post(INGEST, json={"content": "x", "content_type": "text/plain"}, headers=odd)
    assert response.status_code < 500, response.text


async def gql(system: System, query: str, **variables: Any) -> dict[str, Any]:
    response = await system.http.post(GQL, json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    return dict(response.json())


def gql_code(answer: dict[str, Any]) -> int:
    assert answer.get("errors"), answer
    code: int = answer["errors"][0]["extensions"]["code"]
    return code


async def test_poison_over_graphql_is_4xx_like_rest(system: System) -> None:
    ingest = (
        "mutation($c: String!, $t: String!, $m: JSON, $l: [String!]) "
        "{ ingestData(content: $c, contentType: $t, metadata: $m, annotations: $l) { objectId } }"
    )
    for variables in (
        {"c": "a\u0000b", "t": "text/plain"},
        {"c": "x", "t": "<b>/x"},
        {"c": "x", "t": "text/plain", "m": {"n": 2**64}},
        {"c": "x", "t": "text/plain", "m": json.loads(nested_json(300))},
        {"c": "x", "t": "text/plain", "m": ["not an object"]},
        {"c": "x", "t": "text/plain", "l": [""]},
        {"c": "x", "t": "text/plain", "l": ["x" * 5000]},
    ):
        assert gql_code(await gql(system, ingest, **variables)) == 400, variables

    target = (await gql(system, ingest, c="target", t="text/plain"))["data"]["ingestData"]["objectId"]
    annotate = (
        "mutation($id: String!, $t: String!, $c: JSON!) "
        "{ addAnnotation(objectId: $id, annotationType: $t, content: $c) { annotationId } }"
    )
    for object_id, kind, content in (
        (target, "", 1),
        (target, "x" * 5000, 1),
        (target, "<b>markup</b>", 1),
        (target, "label", {"t": "\u0000"}),
        ("not-a-uuid", "label", 1),
    ):
        assert gql_code(await gql(system, annotate, id=object_id, t=kind, c=content)) == 400

    started = time.monotonic()
    deleted = await gql(system, 'mutation { deleteDataObject(objectId: "") { version } }')
    assert gql_code(deleted) == 400 and time.monotonic() - started < 5
    missing = await gql(system, '{ dataObject(objectId: "not-a-uuid") { objectId } }')
    assert missing["data"]["dataObject"] is None
    assert "invalid input syntax" not in json.dumps(missing)

    execute = "mutation($g: JSON!, $o: JSON) { executeGraph(graph: $g, options: $o) { executionId } }"
    graph = {"nodes": [{"id": "in", "type": "input", "params": {"name": "x"}}], "edges": []}
    assert gql_code(await gql(system, execute, g=graph, o={"blob": "x" * 950_000})) == 413

    deep = '{"query": "{ availableNodes }", "variables": {"v": ' + nested_json(5000) + "}}"
    response = await system.http.post(GQL, content=deep.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code < 500, response.text[:300]
    broken = b'{"query": "{ availableNodes }", "variables": {"v": "\xff"}}'
    response = await system.http.post(GQL, content=broken, headers={"Content-Type": "application/json"})
    assert response.status_code < 500, response.text[:300]


async def test_poison_over_websocket_gets_error_messages_and_the_connection_lives(system: System) -> None:
    token = system.http.headers["authorization"].split(" ", 1)[1]
    url = str(system.http.base_url).replace("http://", "ws://").rstrip("/") + f"/ws/poison?access_token={token}"
    async with websockets.connect(url, max_size=None) as ws:
        for message, code in (
            (nested_json(5000), "invalid_json"),
            ('{"type": "execution_status", "execution_id": "not-a-uuid"}', "not_found"),
            ('{"type": "execution_status", "execution_id": "\\u0000"}', "not_found"),
            ('{"type": "subscribe", "topic": "execution:------------------------------------"}', "not_found"),
            ('{"type": "subscribe", "topic": "data_changes\\u0000"}', "invalid_topic"),
        ):
            await ws.send(message)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply["type"] == "error" and reply["code"] == code, (message[:80], reply)
        await ws.send('{"type": "ping"}')
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "pong"}


async def test_every_partition_serves_after_the_poison_requests(system: System) -> None:
    await readable_on_every_partition(system, "after requests")


async def test_poison_events_are_dead_lettered_and_the_projection_continues(system: System) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=system.bootstrap)
    await producer.start()
    poisoned: list[tuple[int, int]] = []
    bad_ids: list[uuid.UUID] = []
    try:
        for partition in range(system.settings.kafka.partitions):
            aggregate_id = uuid.uuid4()
            bad_ids.append(aggregate_id)
            obj = DataObject(
                id=aggregate_id,
                content_type="text/plain\x00",  # what the edge and the processor refuse, on the log anyway
                content_hash="0" * 64,
                size=1,
                location="nowhere",
                metadata={"note": "nul \x00 inside"},
                owner="poisoner",
            )
            obj.delete("poisoner")
            ingested, deleted = obj.collect_events()
            for version, event in ((1, ingested), (2, deleted)):
                value, headers = event_record(aggregate_id, version, event)
                sent = await producer.send_and_wait(
                    system.topics.events, value, key=str(aggregate_id).encode(), partition=partition, headers=headers
                )
                if version == 1:
                    poisoned.append((partition, sent.offset))
            garbage = await producer.send_and_wait(system.topics.events, b"\xff not json", partition=partition)
            poisoned.append((partition, garbage.offset))
    finally:
        await producer.stop()

    async def dead_lettered() -> bool:
        rows = await query(system.settings, "SELECT topic_partition, topic_offset FROM projection_dead_letters")
        return set(poisoned) <= {(p, o) for p, o in rows}

    await eventually(dead_lettered, timeout=60, what="the poison events to be dead-lettered")
    await readable_on_every_partition(system, "after poison events")
    # The event after the dead-lettered one applied (its version counts): the aggregate is at 2.
    rows = await query(
        system.settings,
        "SELECT aggregate_id::text, version FROM aggregate_versions WHERE aggregate_id = ANY(%s::uuid[])",
        ([str(i) for i in bad_ids],),
    )
    assert dict(rows) == {str(i): 2 for i in bad_ids}
    health = (await system.http.get("/health")).json()
    assert health["dead_letters"]["projections"] >= len(poisoned), health


async def ingest_on_every_partition(system: System, label: str) -> dict[int, tuple[str, str]]:
    """partition -> (object id, position) of an ingest that landed there."""
    written: dict[int, tuple[str, str]] = {}
    for i in range(40):
        body = {"content": f"{label} {i}", "content_type": "text/plain"}
        response = await system.http.post("/api/v1/ingest", json=body)
        assert response.status_code == 201, response.text
        created = response.json()
        written.setdefault(int(created["position"].split(":")[0]), (created["object_id"], created["position"]))
        if len(written) == system.settings.kafka.partitions:
            return written
    raise AssertionError(f"not every partition got an ingest: {written}")


async def test_outcomes_name_their_events_offset_after_another_writer(system: System) -> None:
    # An outcome names its event's offset (the consistency token). A record someone else writes to
    # the events partition between batches must not make an outcome name the wrong offset.
    await ingest_on_every_partition(system, "before the foreign record")
    producer = AIOKafkaProducer(bootstrap_servers=system.bootstrap)
    await producer.start()
    try:
        for partition in range(system.settings.kafka.partitions):
            await producer.send_and_wait(system.topics.events, b"\xff foreign", partition=partition)
    finally:
        await producer.stop()
    written = await ingest_on_every_partition(system, "after the foreign record")
    reader = AIOKafkaConsumer(bootstrap_servers=system.bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        for object_id, position in written.values():
            partition, offset = (int(part) for part in position.split(":"))
            tp = TopicPartition(system.topics.events, partition)
            reader.assign([tp])
            reader.seek(tp, offset)
            record = await asyncio.wait_for(reader.getone(tp), 10)
            assert (record.offset, record.key) == (offset, object_id.encode()), position
    finally:
        await reader.stop()


def command(aggregate_id: str, payload: dict[str, Any], command_type: str = "IngestData") -> tuple[str, bytes]:
    command_id = str(uuid.uuid4())
    body = {
        "command_id": command_id,
        "type": command_type,
        "aggregate_id": aggregate_id,
        "payload": payload,
        "actor": {"user_id": "poisoner", "role": "admin"},
    }
    return command_id, json.dumps(body).encode()  # json, not orjson: orjson cannot write 2^64


def ingest_payload(metadata: Any) -> dict[str, Any]:
    return {"content_type": "text/plain", "content_hash": "0" * 64, "size": 1, "location": "x", "metadata": metadata}


async def test_poison_commands_are_rejected_and_the_partition_continues(system: System) -> None:
    reader = AIOKafkaConsumer(bootstrap_servers=system.bootstrap, isolation_level="read_committed")
    await reader.start()
    partitions = range(system.settings.kafka.partitions)
    tps = [TopicPartition(system.topics.outcomes, p) for p in partitions]
    dead_tp = TopicPartition(system.topics.dead_letters, 0)
    reader.assign([*tps, dead_tp])
    await reader.seek_to_end(*tps, dead_tp)
    for tp in (*tps, dead_tp):
        await reader.position(tp)
    expected: dict[str, str] = {}
    producer = AIOKafkaProducer(bootstrap_servers=system.bootstrap, max_request_size=1_048_576)
    await producer.start()
    try:
        for partition in partitions:
            for payload, code in (
                (ingest_payload({"n": 2**64}), "invalid"),
                (ingest_payload(json.loads(nested_json(300))), "invalid"),
                (ingest_payload({"big": "x" * 1_020_000}), "too_large"),  # the command fits; its event cannot
            ):
                command_id, value = command(str(uuid.uuid4()), payload)
                await producer.send_and_wait(system.topics.commands, value, key=b"k", partition=partition)
                expected[command_id] = code
            await producer.send_and_wait(system.topics.commands, b"\x00 garbage", partition=partition)
    finally:
        await producer.stop()

    outcomes: dict[str, dict[str, Any]] = {}
    dead_letters: list[Any] = []
    deadline = time.monotonic() + 60
    while (len(outcomes) < len(expected) or len(dead_letters) < 4 * len(partitions)) and time.monotonic() < deadline:
        for tp, records in (await reader.getmany(timeout_ms=500)).items():
            for record in records:
                if tp == dead_tp:
                    dead_letters.append(record)
                elif record.key is not None and record.key.decode() in expected:
                    outcomes[record.key.decode()] = orjson.loads(record.value)
    await reader.stop()
    assert set(outcomes) == set(expected)
    for command_id, code in expected.items():
        assert outcomes[command_id]["accepted"] is False
        assert outcomes[command_id]["rejection"]["code"] == code, outcomes[command_id]
    assert len(dead_letters) == 4 * len(partitions)
    assert all(dict(r.headers).get("error") for r in dead_letters)
    await readable_on_every_partition(system, "after poison commands")

    async def counted_by_health() -> bool:  # the processor's heartbeat carries its count, once a second
        count = (await system.http.get("/health")).json()["dead_letters"]["processor_since_start"]
        return isinstance(count, int) and count >= len(dead_letters)

    await eventually(counted_by_health, timeout=15, what="/health to count the processor's dead letters")
