"""Event streams from a position, on GraphQL (gql's WebsocketsTransport), /ws and SSE: catch-up then
live with no gap and no duplicate, exact resumption, filters, visibility, and the slow consumer's
``lagged``. Every check compares with the audit log itself. One system serves the module."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
import websockets
from gql import Client, GraphQLRequest, gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from prometheus_client.parser import text_string_to_metric_families

from commands.tasks import cancel_and_wait
from infra.runtime.settings import load_settings
from projections.event_stream import parse_position
from tests.conftest import environment_for
from tests.integration.harness import eventually, query
from tests.integration.system import RunningSystem, running_system
from tests.integration.users import client_for, create_user, token_of, ws_base

TRANSPORTS = ["graphql", "ws", "sse"]
PAGE_SIZE = 7  # small, so a catch-up takes many pages
BUFFER_BYTES = 256 * 1024
BIG_METADATA = 50_000
KEEPALIVE_SECONDS = 1
EVENT_FIELDS = "position partition offset eventId eventType aggregateId aggregateVersion data"
DOCUMENT = gql(
    "subscription($after: String, $types: [String!], $aggregate: String) {"
    " events(afterPosition: $after, types: $types, aggregateId: $aggregate) {"
    f" __typename ... on StreamEvent {{ {EVENT_FIELDS} }} ... on StreamLagged {{ position message }} }} }}"
)
Item = dict[str, Any]  # {"kind": "event"|"lagged", "position", and for events partition, offset, event_id, ...}


@pytest.fixture(scope="module")
async def system(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningSystem]:
    tmp_path = tmp_path_factory.mktemp("event-streams")
    env = {
        **environment_for(services, tmp_path),
        "PIPELINE_EVENT_STREAM_PAGE_SIZE": str(PAGE_SIZE),
        "PIPELINE_EVENT_STREAM_BUFFER_BYTES": str(BUFFER_BYTES),
        "PIPELINE_EVENT_STREAM_KEEPALIVE_SECONDS": str(KEEPALIVE_SECONDS),
    }
    async with running_system(env, tmp_path) as running:
        yield running


def from_event(position: str, event: dict[str, Any]) -> Item:
    return {"kind": "event", "position": position, **event}


async def graphql_stream(client: httpx.AsyncClient, variables: dict[str, Any]) -> AsyncIterator[Item]:
    transport = WebsocketsTransport(
        url=ws_base(client) + "/api/graphql", init_payload={"Authorization": f"Bearer {token_of(client)}"}
    )
    async with Client(transport=transport) as session:
        async for result in session.subscribe(GraphQLRequest(DOCUMENT, variable_values=variables)):
            item = result["events"]
            if item["__typename"] == "StreamLagged":
                yield {"kind": "lagged", "position": item["position"]}
                return
            yield {
                "kind": "event",
                "position": item["position"],
                "partition": item["partition"],
                "offset": item["offset"],
                "event_id": item["eventId"],
                "event_type": item["eventType"],
                "aggregate_id": item["aggregateId"],
                "data": item["data"],
            }


async def ws_stream(client: httpx.AsyncClient, variables: dict[str, Any]) -> AsyncIterator[Item]:
    url = f"{ws_base(client)}/ws/streams-{uuid.uuid4().hex[:8]}?access_token={token_of(client)}"
    async with websockets.connect(url, max_size=None) as socket_:
        subscribe: dict[str, Any] = {"type": "subscribe", "topic": "events"}
        for key, name in (("after", "after"), ("types", "types"), ("aggregate", "aggregate_id")):
            if variables.get(key) is not None:
                subscribe[name] = variables[key]
        await socket_.send(orjson.dumps(subscribe).decode())
        async for raw in socket_:
            message = orjson.loads(raw)
            if message["type"] == "error":
                raise AssertionError(f"ws error: {message}")
            if message.get("topic") != "events" or message["type"] == "subscribed":
                continue
            if message["type"] == "lagged":
                yield {"kind": "lagged", "position": message["position"]}
                return
            yield from_event(message["position"], message["event"])


def sse_messages(text: str) -> list[dict[str, str]]:
    """Complete SSE messages in ``text`` (fields joined; data lines joined by newlines)."""
    messages = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            if name and not line.startswith(":"):
                fields[name] = fields[name] + "\n" + value if name in fields else value
        if fields:
            messages.append(fields)
    return messages


def sse_item(message: dict[str, str]) -> Item:
    body = orjson.loads(message["data"])
    if message.get("event") == "lagged":
        assert body["position"] == message["id"]
        return {"kind": "lagged", "position": message["id"]}
    if message.get("event") == "error":
        return {"kind": "error", **body}
    assert message.get("event") == "event", message
    return from_event(message["id"], body)


def sse_params(variables: dict[str, Any]) -> dict[str, str]:
    params = {}
    if variables.get("after") is not None:
        params["after"] = variables["after"]
    if variables.get("types") is not None:
        params["types"] = ",".join(variables["types"])
    if variables.get("aggregate") is not None:
        params["aggregate_id"] = variables["aggregate"]
    return params


async def sse_stream(
    client: httpx.AsyncClient, variables: dict[str, Any], headers: dict[str, str] | None = None
) -> AsyncIterator[Item]:
    params = sse_params(variables)
    async with client.stream("GET", "/api/v1/events/stream", params=params, headers=headers or {}) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        # httpx asks for br/gzip: a compressed stream would be held in the compressor, i.e. silent.
        assert "content-encoding" not in response.headers
        pending = ""
        async for chunk in response.aiter_text():
            pending += chunk
            *complete, pending = pending.replace("\r\n", "\n").split("\n\n")
            for message in sse_messages("\n\n".join(complete)):
                item = sse_item(message)
                yield item
                if item["kind"] != "event":
                    return


def open_stream(transport: str, client: httpx.AsyncClient, **variables: Any) -> AsyncIterator[Item]:
    if transport == "graphql":
        return graphql_stream(client, variables)
    if transport == "ws":
        return ws_stream(client, variables)
    return sse_stream(client, variables)


async def collect(stream: AsyncIterator[Item], done: Callable[[list[Item]], bool], timeout: float = 90) -> list[Item]:
    """Items of ``stream`` until ``done(items)``; the stream is closed afterwards."""
    items: list[Item] = []
    async with contextlib.aclosing(stream), asyncio.timeout(timeout):  # type: ignore[type-var]
        if done(items):
            return items
        async for item in stream:
            items.append(item)
            if done(items) or item["kind"] != "event":
                break
    return items


async def audit_rows(system: RunningSystem, where: str = "true", params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """(partition, offset, event_id, event_type, aggregate_id) of the audit log's rows, in position order."""
    return [
        tuple(row)
        for row in await query(
            load_settings(environ=system.env),
            "SELECT topic_partition, topic_offset, event_id, event_type, aggregate_id::text FROM audit_log"
            f" WHERE {where} ORDER BY topic_partition, topic_offset",
            params,
        )
    ]


async def projected(system: RunningSystem, objects: list[str]) -> list[tuple[Any, ...]]:
    """The audit log's rows once it has the Ingested event of every one of ``objects``."""

    async def complete() -> list[tuple[Any, ...]] | None:
        rows = await audit_rows(system)
        return rows if set(objects) <= {row[4] for row in rows} else None

    result: list[tuple[Any, ...]] = await eventually(complete, what="the objects in the audit log")
    return result


async def ingest(client: httpx.AsyncClient, content: str, metadata: dict[str, Any] | None = None) -> str:
    body = {"content": content, "content_type": "text/plain", "metadata": metadata or {}}
    response = await client.post("/api/v1/ingest", json=body)
    assert response.status_code in (200, 201), response.text
    return str(response.json()["object_id"])


async def ingest_many(
    client: httpx.AsyncClient, count: int, tag: str, done: list[str], parallel: int = 6, padding: int = 0
) -> None:
    slots = asyncio.Semaphore(parallel)

    async def one(n: int) -> None:
        async with slots:
            done.append(await ingest(client, f"{tag} {n}", {"tag": tag, "padding": "x" * padding}))

    await asyncio.gather(*(one(n) for n in range(count)))


def positions(items: list[Item]) -> list[tuple[int, int]]:
    return [(item["partition"], item["offset"]) for item in items if item["kind"] == "event"]


def assert_exact(items: list[Item], rows: list[tuple[Any, ...]]) -> None:
    """No duplicate; per partition, exactly the rows up to the last one received; positions say so."""
    seen = positions(items)
    assert len(seen) == len(set(seen)), "an event was delivered twice"
    last: dict[int, int] = {}
    for item in items:
        if item["kind"] != "event":
            continue
        partition, offset = item["partition"], item["offset"]
        assert offset > last.get(partition, -1), "out of order within a partition"
        last[partition] = offset
        vector = parse_position(item["position"])
        assert vector[partition] == offset and all(vector[p] == o for p, o in last.items()), item["position"]
    expected = [(p, o) for p, o, *_ in rows if o <= last.get(p, -1)]
    assert sorted(seen) == expected, "a gap: the stream skipped events the audit log has"
    ids = {row[2] for row in rows}
    assert all(item["event_id"] in ids for item in items if item["kind"] == "event")


class Following:
    """A stream read in the background: a test waits on what it has delivered so far, not on its next item.

    (Deciding only when an item arrives misses a condition that comes true in between, such as an
    ingest's answer reaching the client after the stream already delivered its event: nothing more
    arrives, and the test waits for an item that never comes.)
    """

    def __init__(self, stream: AsyncIterator[Item]) -> None:
        self.items: list[Item] = []
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: AsyncIterator[Item]) -> None:
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for item in stream:
                self.items.append(item)

    def ingested(self) -> set[str]:
        if self._task.done():
            self._task.result()  # the stream failed: its error
            raise AssertionError(f"the stream ended: {self.items[-1:]}")
        return {item["aggregate_id"] for item in self.items if item.get("event_type") == "DataObject.Ingested"}

    async def until_ingested(self, objects: list[str]) -> None:
        async def delivered() -> bool:
            return set(objects) <= self.ingested()

        await eventually(delivered, timeout=90, what=f"the stream to deliver {len(objects)} ingests")

    async def close(self) -> None:
        await cancel_and_wait(self._task)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_catch_up_then_live_across_a_burst_of_ingests_has_no_gap_and_no_duplicate(
    system: RunningSystem, transport: str
) -> None:
    tag = uuid.uuid4().hex
    burst: list[str] = []
    ingesting = asyncio.create_task(ingest_many(system.admin, 40, tag, burst))

    async def under_way() -> bool:
        return len(burst) >= 5

    await eventually(under_way, what="the burst to be under way")
    stream = Following(open_stream(transport, system.admin))
    try:
        await ingesting
        await stream.until_ingested(burst)
        later: list[str] = []  # live now: these arrive only through the hub
        await ingest_many(system.admin, 5, tag + "-live", later, parallel=5)
        await stream.until_ingested(later)
    finally:
        await stream.close()
    assert_exact(stream.items, await audit_rows(system))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resuming_from_the_last_position_continues_exactly(system: RunningSystem, transport: str) -> None:
    created: list[str] = []
    await ingest_many(system.admin, 12, uuid.uuid4().hex, created)
    rows = await projected(system, created)
    everything = {(p, o) for p, o, *_ in rows}

    first = await collect(open_stream(transport, system.admin), lambda items: len(items) == 10)
    resume_at = first[-1]["position"]
    if transport == "sse":  # EventSource's reconnect: Last-Event-ID wins over the URL's after=
        stream = sse_stream(system.admin, {"after": "now"}, headers={"Last-Event-ID": resume_at})
    else:
        stream = open_stream(transport, system.admin, after=resume_at)
    rest = await collect(stream, lambda items: set(positions(first + items)) >= everything)
    assert not set(positions(first)) & set(positions(rest)), "the resumed stream repeated events"
    assert_exact(first + rest, rows)


async def test_a_quiet_sse_stream_sends_keep_alive_comments(system: RunningSystem) -> None:
    """Nothing to send: a ``: keep-alive`` comment every ``event_stream.keepalive_seconds`` (1 s here),
    which EventSource ignores, so proxies and clients that time out a silent response see it alive."""
    params = {"after": "now", "aggregate_id": str(uuid.uuid4())}  # no event will ever match
    text = ""
    async with system.admin.stream("GET", "/api/v1/events/stream", params=params) as response:
        assert response.status_code == 200, await response.aread()
        async with asyncio.timeout(60):
            async for chunk in response.aiter_text():
                text += chunk
                if text.count(": keep-alive") >= 3:
                    break
    assert text.replace("\r\n", "\n") == ": keep-alive\n\n" * 3  # comments only, no (empty) message
    assert sse_messages(text) == []


async def test_filters_by_type_and_aggregate(system: RunningSystem) -> None:
    object_id = await ingest(system.admin, "filtered")
    other = await ingest(system.admin, "not this one")
    for n in range(2):
        response = await system.admin.post(
            f"/api/v1/data/{object_id}/annotations", json={"annotation_type": "label", "content": {"n": n}}
        )
        assert response.status_code in (200, 201), response.text
    await system.admin.post(f"/api/v1/data/{other}/annotations", json={"annotation_type": "label", "content": {}})
    annotated = await collect(
        open_stream("graphql", system.admin, types=["DataObject.Annotated"], aggregate=object_id),
        lambda items: len(items) == 2,
    )
    assert [item["data"]["content"] for item in annotated] == [{"n": 0}, {"n": 1}]
    assert {item["aggregate_id"] for item in annotated} == {object_id}
    # An aggregate type stands for all its events; the same filter over SSE and /ws.
    for transport in ("sse", "ws"):
        whole = await collect(
            open_stream(transport, system.admin, types=["DataObject"], aggregate=object_id),
            lambda items: len(items) == 3,
        )
        assert [item["event_type"] for item in whole] == ["DataObject.Ingested"] + ["DataObject.Annotated"] * 2
    executions = await collect(
        open_stream("sse", system.admin, types=["Execution", "User.Registered"], after="now"), lambda items: True
    )
    assert executions == []  # "now" starts at the end: nothing to catch up


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"types": "DataObject.Exploded"}, "unknown event type"),
        ({"after": "0:x"}, "not a position"),
        ({"after": "0:1,0:2"}, "repeated"),
        ({"after": "99999:1"}, "out-of-range"),
        ({"after": "7:0"}, "no partition 7"),  # the test topics have fewer partitions
        ({"after": "0:123456789"}, "no event at offset 123456789"),  # past the log's end: would skip silently
        ({"aggregate_id": "not-a-uuid"}, "UUID"),
        ({"types": ",".join(["DataObject"] * 51)}, "types"),
    ],
)
async def test_bad_stream_parameters_are_refused_on_every_transport(
    system: RunningSystem, params: dict[str, str], says: str
) -> None:
    response = await system.admin.get("/api/v1/events/stream", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["reason"] == "validation_error"
    assert says in response.json()["error"]["message"]

    variables: dict[str, Any] = {
        "after": params.get("after"),
        "types": params["types"].split(",") if "types" in params else None,
        "aggregate": params.get("aggregate_id"),
    }
    with pytest.raises(TransportQueryError, match=says):
        await collect(graphql_stream(system.admin, variables), lambda items: False, timeout=30)
    with pytest.raises(AssertionError, match=says):
        await collect(ws_stream(system.admin, variables), lambda items: False, timeout=30)


async def test_a_user_sees_only_the_events_of_their_own_objects_and_themselves(system: RunningSystem) -> None:
    alice = await create_user(system.admin, f"stream-alice-{uuid.uuid4().hex[:6]}")
    bob = await create_user(system.admin, f"stream-bob-{uuid.uuid4().hex[:6]}")
    async with (
        await client_for(system.anonymous, alice["username"]) as alice_client,
        await client_for(system.anonymous, bob["username"]) as bob_client,
    ):
        bobs = await ingest(bob_client, "bob's")
        mine = [await ingest(alice_client, f"alice's {n}") for n in range(2)]
        response = await system.admin.post(
            f"/api/v1/data/{mine[0]}/annotations", json={"annotation_type": "label", "content": {"by": "admin"}}
        )
        assert response.status_code in (200, 201), response.text
        own = {alice["user_id"], *mine}

        async def all_projected() -> list[tuple[Any, ...]] | None:
            rows = await audit_rows(system, "aggregate_id::text = ANY(%s)", (list(own),))
            return rows if len(rows) == 4 else None  # registered, two ingests, the admin's annotation

        expected = await eventually(all_projected, what="alice's events in the audit log")
        for transport in TRANSPORTS:
            items = await collect(
                open_stream(transport, alice_client),
                lambda items: {i["event_id"] for i in items} >= {row[2] for row in expected},
            )
            assert {item["aggregate_id"] for item in items} <= own, f"{transport}: another user's event"
            assert_exact(items, expected)
        seen_by_bob = await collect(
            open_stream("sse", bob_client), lambda items: any(i["aggregate_id"] == bobs for i in items)
        )
        assert not {item["aggregate_id"] for item in seen_by_bob} & own


async def overflows(system: RunningSystem) -> float:
    response = await system.anonymous.get("/metrics")
    assert response.status_code == 200, response.text
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "pipeline_event_stream_overflows_total"
    )


async def test_a_slow_consumer_gets_lagged_with_a_position_to_resume_from(system: RunningSystem) -> None:
    """A client that stops reading: the server's buffers fill, the stream's bounded buffer overflows,
    the stream ends with ``lagged`` at the last position it delivered, and resuming there loses nothing."""
    tag = uuid.uuid4().hex
    before = await overflows(system)
    url = httpx.URL(str(system.admin.base_url))
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's sends block soon
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, (url.host, url.port))
    reader, writer = await asyncio.open_connection(sock=raw, limit=1024)
    request = (
        f"GET /api/v1/events/stream?after=now&types=DataObject.Ingested HTTP/1.1\r\nHost: {url.host}\r\n"
        f"Authorization: Bearer {token_of(system.admin)}\r\nAccept: text/event-stream\r\n\r\n"
    )
    writer.write(request.encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    ingested: list[str] = []

    async def overflowed() -> bool:  # ingest large events until the server reports the overflow
        if await overflows(system) > before:
            return True
        assert len(ingested) < 400, "no overflow after 20 MB of events"
        await ingest_many(system.admin, 10, tag, ingested, parallel=5, padding=BIG_METADATA)
        return False

    await eventually(overflowed, timeout=300, what="the stream's buffer to overflow")
    body = b""
    with contextlib.suppress(asyncio.IncompleteReadError):
        while chunk := await reader.read(65536):  # chunked encoding: the framing stays in, harmlessly
            body += chunk
            if b"event: lagged" in body and body.endswith(b"\r\n\r\n0\r\n\r\n"):
                break
    writer.close()
    messages = [m for m in sse_messages(_unchunk(body)) if "event" in m]
    items = [sse_item(message) for message in messages]
    assert items[-1]["kind"] == "lagged"
    events = items[:-1]
    assert len(events) < len(ingested)  # it fell behind indeed
    if events:
        assert items[-1]["position"] == events[-1]["position"]

    resumed = await collect(
        sse_stream(system.admin, {"after": items[-1]["position"], "types": ["DataObject.Ingested"]}),
        lambda got: set(ingested) <= {i["aggregate_id"] for i in events + got},
    )
    ids = [item["aggregate_id"] for item in events + resumed if item["aggregate_id"] in set(ingested)]
    assert sorted(ids) == sorted(ingested), "lost or repeated across the lagged reconnect"


def _unchunk(body: bytes) -> str:
    """The payload of an HTTP/1.1 chunked body (as far as it goes)."""
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        if not size_line.strip():
            continue
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out.decode()


async def test_a_stream_follows_a_demotion_at_once_and_ends_on_disable(system: RunningSystem) -> None:
    suffix = uuid.uuid4().hex[:6]
    watcher = await create_user(system.admin, f"stream-watcher-{suffix}", "admin")
    other = await create_user(system.admin, f"stream-other-{suffix}")
    async with (
        await client_for(system.anonymous, watcher["username"]) as me,
        await client_for(system.anonymous, other["username"]) as them,
    ):
        items: list[Item] = []

        async def follow() -> None:
            async for item in sse_stream(me, {"after": "now", "types": ["DataObject.Ingested"]}):
                items.append(item)

        following = asyncio.create_task(follow())
        try:

            async def seen(object_id: str) -> bool:
                assert not following.done() or following.exception() is None
                return any(item.get("aggregate_id") == object_id for item in items)

            theirs = await ingest(them, "an admin sees this")
            await eventually(lambda: seen(theirs), what="another user's object, seen as an admin")

            response = await system.admin.patch(f"/api/v1/users/{watcher['user_id']}", json={"role": "user"})
            assert response.status_code == 200, response.text
            hidden = await ingest(them, "a user does not see this")
            mine = await ingest(me, "mine")
            await eventually(lambda: seen(mine), what="the demoted user's own object")
            assert not await seen(hidden)

            response = await system.admin.patch(f"/api/v1/users/{watcher['user_id']}", json={"disabled": True})
            assert response.status_code == 200, response.text
            await asyncio.wait_for(following, 30)
            assert items[-1]["kind"] == "error" and items[-1]["reason"] == "forbidden", items[-1]
        finally:
            await cancel_and_wait(following)
