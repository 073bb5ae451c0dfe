"""The fourth hardening sweep: what an independent tester's clients found, one test each.

One system (workers, API) serves the whole module. Each test names the request that showed the defect.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import websockets

from tests.integration.harness import ws_ask
from tests.integration.system import RunningSystem
from tests.integration.test_hardening_3 import short_lived_token, until_closed
from tests.integration.users import (
    assert_envelope,
    ingest_readable,
    system_with_alice_and_vera,
    token_of,
    ws_base,
)

GQL = "/api/graphql"


system, users = system_with_alice_and_vera("hardening-4")


# --- request bodies ---------------------------------------------------------------------------------


async def test_a_json_body_is_decoded_strictly(users: dict[str, httpx.AsyncClient]) -> None:
    """Found: ``POST /api/v1/data/{id}/annotations`` with ``"confidence": "0.5"`` (a string; the spec says a
    number) was accepted (201): litestar converted a body's values as it converts query strings."""
    alice = users["alice"]
    object_id, _ = await ingest_readable(alice, "strict bodies")
    url = f"/api/v1/data/{object_id}/annotations"
    refused = await alice.post(url, json={"annotation_type": "label", "content": "x", "confidence": "0.5"})
    error = assert_envelope(refused, 400)
    assert error["reason"] == "validation_error" and error["details"]["field"] == "confidence", error
    assert error["details"]["errors"][0]["message"] == "Expected `float`, got `str`", error
    # Numbers still pass, an integer as a float too, and the other bodies' errors keep their shape.
    for confidence in (0.5, 1):
        ok = await alice.post(url, json={"annotation_type": "label", "content": "x", "confidence": confidence})
        assert ok.status_code == 201, ok.text
    missing = assert_envelope(await alice.post(url, json={"annotation_type": "label"}), 400)
    assert missing["details"]["field"] == "content", missing
    unknown = assert_envelope(await alice.post(url, json={"annotation_type": "l", "content": 1, "zz": 1}), 400)
    assert unknown["details"]["field"] == "zz", unknown
    ingest = await alice.post("/api/v1/ingest", json={"content": 5, "content_type": "text/plain"})
    assert assert_envelope(ingest, 400)["details"]["field"] == "content"
    read = await alice.post("/api/v1/notifications/read", json={"ids": "abc"})
    assert assert_envelope(read, 400)["details"]["field"] == "ids"


async def test_a_body_that_is_not_a_json_object_says_so_and_names_the_body(users: dict[str, httpx.AsyncClient]) -> None:
    """Found: an empty body said ``'data'`` (a KeyError's text, naming the handler's argument), ``null``
    named the field ``data``, a malformed body or one nested 3,000 deep answered ``details: null``, as did
    ``POST /api/graphql`` with a body that is not JSON or has no query."""
    alice = users["alice"]
    cases = {
        b"": "empty",
        b"   ": "empty",
        b"null": "Expected `object`, got `null`",
        b'{"content": "x", ': "not valid JSON",
        b'{"content":"x","content_type":"text/plain","metadata":' + b'{"a":' * 3000 + b"1" + b"}" * 3001: "deeply",
    }
    for body, says in cases.items():
        response = await alice.post("/api/v1/ingest", content=body, headers={"Content-Type": "application/json"})
        error = assert_envelope(response, 400)
        assert error["details"]["field"] == "body", (body[:30], error)
        assert says in json.dumps(error), (body[:30], error)
    # Without a Content-Type too (taken as JSON).
    bare = await alice.post("/api/v1/notifications/read", content=b"")
    assert assert_envelope(bare, 400)["details"]["field"] == "body"
    # GraphQL's refusals of a whole request name what they are about too.
    json_type = {"Content-Type": "application/json"}
    for body, field in ((b'{"query": ', "body"), (b'{"variables": {}}', "query")):
        refused = assert_envelope(await alice.post(GQL, content=body, headers=json_type), 400)
        assert refused["details"]["field"] == field, refused


async def test_upload_metadata_cannot_name_what_the_server_sets(users: dict[str, httpx.AsyncClient]) -> None:
    """Found: ``POST /api/v1/upload`` with the metadata part ``{"owner": "someone", "filename": "x"}`` was
    accepted and both keys silently replaced by the server's values."""
    alice = users["alice"]
    for key in ("owner", "filename", "size", "sha256"):
        files = [("files", ("a.txt", b"hello", "text/plain"))]
        response = await alice.post("/api/v1/upload", files=files, data={"metadata": json.dumps({key: "mine"})})
        error = assert_envelope(response, 400)
        assert error["details"]["field"] == f"metadata.{key}" and "set by the server" in error["message"], error
    files = [("files", ("a.txt", b"hello", "text/plain"))]
    kept = await alice.post("/api/v1/upload", files=files, data={"metadata": '{"project": "x"}'})
    assert kept.status_code == 201, kept.text
    uploaded = kept.json()["uploaded"][0]
    read = await alice.get(
        f"/api/v1/data/{uploaded['object_id']}", headers={"X-Consistency-Token": uploaded["position"]}
    )
    assert read.json()["metadata"]["project"] == "x" and read.json()["metadata"]["filename"] == "a.txt"


# --- live connections -------------------------------------------------------------------------------


async def test_a_quiet_event_stream_ends_when_its_token_expires(
    system: RunningSystem, users: dict[str, httpx.AsyncClient]
) -> None:
    """Found: ``GET /api/v1/events/stream?after=now`` opened with a token that expired went on sending
    keep-alives; it ended only at its next delivery, which on a quiet stream may never come."""
    token = await short_lived_token(system, users["alice"], 3)
    headers = {"Authorization": f"Bearer {token}"}
    started = time.monotonic()
    async with (
        httpx.AsyncClient(base_url=system.anonymous.base_url, timeout=30) as client,
        client.stream("GET", "/api/v1/events/stream", params={"after": "now"}, headers=headers) as stream,
    ):
        assert stream.status_code == 200
        lines: list[str] = []
        async with asyncio.timeout(20):
            async for line in stream.aiter_lines():
                lines.append(line)
    elapsed = time.monotonic() - started
    assert 1 < elapsed < 15, (elapsed, lines)
    assert "event: error" in lines, lines
    data = json.loads(next(line for line in lines if line.startswith("data:"))[5:])
    assert data["reason"] == "token_expired", data


async def test_a_graphql_websocket_message_of_the_wrong_shape_closes_4400_not_4500(
    users: dict[str, httpx.AsyncClient],
) -> None:
    """Found: ``{"id": "1", "type": "subscribe", "payload": 5}`` on graphql-transport-ws (and an object as
    ``id``, a JSON array, ``variables: [1]``) closed the connection with 4500 Internal Server Error; the
    legacy graphql-ws ``{"type": "start", "payload": 5}`` too."""
    alice = users["alice"]
    query = {"query": "{ __typename }"}
    malformed = [
        {"id": "1", "type": "subscribe", "payload": 5},
        {"id": {"a": 1}, "type": "subscribe", "payload": query},
        [1, 2],
        {"id": "1", "type": "subscribe", "payload": {"query": 5}},
        {"id": "1", "type": "subscribe", "payload": {"query": "{ __typename }", "variables": [1]}},
        {"id": 7, "type": "complete"},
    ]
    for protocol, start in (("graphql-transport-ws", "subscribe"), ("graphql-ws", "start")):
        for message in malformed:
            if isinstance(message, dict) and message["type"] == "subscribe":
                message = {**message, "type": start}
            async with websockets.connect(f"{ws_base(alice)}{GQL}", subprotocols=[protocol]) as ws:  # type: ignore[list-item]
                await ws.send(json.dumps({"type": "connection_init", "payload": {"authToken": token_of(alice)}}))
                assert json.loads(await ws.recv())["type"] == "connection_ack"
                await ws.send(json.dumps(message))
                _, closed = await until_closed(ws, 10)
            assert closed.rcvd is not None and closed.rcvd.code == 4400, (protocol, message, closed)
    # A well-formed one still runs.
    async with websockets.connect(f"{ws_base(alice)}{GQL}", subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authToken": token_of(alice)}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": query}))
        assert json.loads(await ws.recv())["payload"] == {"data": {"__typename": "Query"}}


async def test_a_bad_header_or_filter_is_named_in_the_error(users: dict[str, httpx.AsyncClient]) -> None:
    """Found: ``If-Match: abc``, ``Idempotency-Key: <5,000 characters>``, ``X-Consistency-Token: abc`` and
    ``GET /api/v1/search?filters={"zzz": 1}`` answered 400 without ``details.field``: the README says a bad
    header or parameter is named there."""
    alice = users["alice"]
    object_id, _ = await ingest_readable(alice, "bad headers")
    url = f"/api/v1/data/{object_id}/annotations"
    body = {"annotation_type": "label", "content": "x"}
    for header, value in (("If-Match", "abc"), ("Idempotency-Key", "k" * 5000)):
        error = assert_envelope(await alice.post(url, json=body, headers={header: value}), 400)
        assert error["reason"] == "invalid_header" and error["details"]["field"] == header, error
    for token, reason in (("abc", "invalid_token"), ("0:999999999", "invalid_token")):
        read = await alice.get(f"/api/v1/data/{object_id}", headers={"X-Consistency-Token": token})
        error = assert_envelope(read, 400)
        assert error["reason"] == reason and error["details"]["field"] == "X-Consistency-Token", error
    unknown = await alice.get("/api/v1/search", params={"query": "x", "filters": '{"zzz": 1}'})
    assert assert_envelope(unknown, 400)["details"]["field"] == "filters"


async def test_a_range_with_an_if_range_of_another_copy_gets_the_whole_body(
    users: dict[str, httpx.AsyncClient],
) -> None:
    """Found: ``GET /api/v1/data/{id}/content`` with ``Range: bytes=0-1`` and ``If-Range: "<another etag>"``
    answered 206 with two bytes: RFC 9110 (13.1.5) says the range applies only while the client's copy is
    the current one (a strong match of its ETag); otherwise the answer is the whole body (200)."""
    alice = users["alice"]
    object_id, _ = await ingest_readable(alice, "if-range body")
    url = f"/api/v1/data/{object_id}/content"
    etag = (await alice.get(url)).headers["etag"]
    for other in ('"not-this-one"', f"W/{etag}", "Wed, 21 Oct 2015 07:28:00 GMT"):
        whole = await alice.get(url, headers={"Range": "bytes=0-1", "If-Range": other})
        assert whole.status_code == 200 and whole.content == b"if-range body", (other, whole.status_code)
    same = await alice.get(url, headers={"Range": "bytes=0-1", "If-Range": etag})
    assert same.status_code == 206 and same.content == b"if", same.status_code


# --- poison that passes the API ---------------------------------------------------------------------


def distinct_words(size: int) -> bytes:
    """``size`` bytes of text, every word different (w0 w1 ... in base 36)."""
    words, total, index = [], 0, 0
    while total < size:
        word = "w" + _base36(index)
        words.append(word)
        total += len(word) + 1
        index += 1
    return " ".join(words).encode()[:size]


def _base36(number: int) -> str:
    digits = ""
    while True:
        number, rest = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[rest] + digits
        if number == 0:
            return digits


async def test_a_text_whose_search_vector_is_over_a_mib_does_not_stop_the_projection(
    users: dict[str, httpx.AsyncClient],
) -> None:
    """Found: ``POST /api/v1/upload`` of a 1 MiB text file of distinct short words (accepted, 201) made a
    1.7 MB tsvector; PostgreSQL refuses one over 1 MiB (ProgramLimitExceeded), which the projection runner
    took for a connection failure and retried for ever: that partition applied nothing more, every later
    write on it stayed unreadable (503 not_yet_consistent), and /health said the projection was ok."""
    alice = users["alice"]
    files = [("files", ("words.txt", distinct_words(1024 * 1024), "text/plain"))]
    uploaded = await alice.post("/api/v1/upload", files=files)
    assert uploaded.status_code == 201, uploaded.text
    written = uploaded.json()["uploaded"][0]
    token = {"X-Consistency-Token": written["position"]}
    read = await alice.get(f"/api/v1/data/{written['object_id']}", headers=token)
    assert read.status_code == 200, read.text[:300]
    # Indexed as far as a vector holds: its first words are found.
    found = await alice.get("/api/v1/search", params={"query": "w0 w1a"})
    assert [r["object_id"] for r in found.json()["results"]] == [written["object_id"]], found.text[:300]
    # And the partition goes on: a later write on it is readable.
    object_id, _ = await ingest_readable(alice, "after the long text")
    assert object_id


async def test_a_nul_in_a_docs_asset_path_is_404_not_500(system: RunningSystem) -> None:
    """Found: ``GET /api/docs/assets/%00`` answered 500 (the file system's ValueError "embedded null byte")."""
    for path in ("/api/docs/assets/%00", "/api/docs/assets/swagger%00.js", "/api/docs/assets/a/%00/b"):
        error = assert_envelope(await system.anonymous.get(path), 404)
        assert error["reason"] == "not_found", error


def multipart(*parts: tuple[str, bytes, str | None]) -> bytes:
    """A multipart/form-data body (boundary ``XyZ``) of (name, data, filename) parts, closed."""
    body = b""
    for name, data, filename in parts:
        disposition = f'Content-Disposition: form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += b"--XyZ\r\n" + disposition.encode() + b"\r\n\r\n" + data + b"\r\n"
    return body + b"--XyZ--\r\n"


async def test_a_malformed_upload_names_what_is_wrong(users: dict[str, httpx.AsyncClient]) -> None:
    """Found: ``POST /api/v1/upload`` with two ``metadata`` parts said "metadata is not valid JSON: trailing
    characters" (their bytes ran together); a malformed body, a part header over the parser's limit, a
    ``files`` part without a filename or an unknown field answered ``details: null``."""
    alice = users["alice"]
    headers = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    file = ("files", b"hello", "a.txt")
    cases = [
        (multipart(("metadata", b'{"a": 1}', None), ("metadata", b'{"b": 2}', None), file), "metadata", "one"),
        (multipart(("files", b"hello", None)), "files", "unexpected form field"),
        (multipart(("zzz", b"hello", "a.txt")), "zzz", "unexpected form field"),
        (multipart(("files", b"hello", "x" * 10_000)), "body", "parser limit"),
        (multipart(file)[:-9], "body", "multipart body"),
    ]
    for body, field, says in cases:
        error = assert_envelope(await alice.post("/api/v1/upload", content=body, headers=headers), 400)
        assert error["details"]["field"] == field and says in error["message"], (field, error)


async def test_a_topic_with_a_trailing_newline_is_not_a_topic(users: dict[str, httpx.AsyncClient]) -> None:
    """Found (spec5): ``{"type": "subscribe", "topic": "data_changes\\n"}`` was answered ``subscribed`` (the
    pattern's ``$`` matches before a final newline) to a topic that never carries a message."""
    alice = users["alice"]
    async with websockets.connect(f"{ws_base(alice)}/ws/newline?access_token={token_of(alice)}") as ws:
        reply = await ws_ask(ws, {"type": "subscribe", "topic": "data_changes\n"})
        assert reply["type"] == "error" and reply["code"] == "invalid_topic", reply
        assert (await ws_ask(ws, {"type": "subscribe", "topic": "data_changes"}))["type"] == "subscribed"
