"""Upload (multipart, streamed) and content read-back through the real pipeline, one system for the module.

The per-file limit is set just above the 50 MiB file, so the large-file test and the over-limit tests
share one system (each system costs ~30 s to start on the CI machine).
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import environment_for
from tests.integration.harness import ROOT, eventually
from tests.integration.system import RunningSystem, running_system
from tests.integration.users import client_for, create_user

MIB = 1024 * 1024
FILE_LIMIT = 51 * MIB
REQUEST_LIMIT = 52 * MIB
MAX_FILES = 8
EVENT_CONTENT_LIMIT = 2048  # ingested content up to this travels in its event, larger goes to the blob store


@pytest.fixture(scope="module")
async def system(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningSystem]:
    tmp_path = tmp_path_factory.mktemp("upload")
    env = {
        **environment_for(services, tmp_path),
        "PIPELINE_STORAGE_MAX_UPLOAD_FILE_BYTES": str(FILE_LIMIT),
        "PIPELINE_STORAGE_MAX_UPLOAD_REQUEST_BYTES": str(REQUEST_LIMIT),
        "PIPELINE_STORAGE_MAX_UPLOAD_FILES": str(MAX_FILES),
        "PIPELINE_STORAGE_INLINE_CONTENT_BYTES": "1000",
        "PIPELINE_STORAGE_EVENT_CONTENT_BYTES": str(EVENT_CONTENT_LIMIT),
    }
    async with running_system(env, tmp_path) as running:
        yield running


def blob_dir(system: RunningSystem) -> Path:
    return Path(system.env["PIPELINE_DATA_DIR"]) / "blobs"


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF showing ``text`` (Helvetica), with a correct xref table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
FILES: dict[str, tuple[bytes, str | None, str]] = {
    # name: (bytes, declared type, the type the object must get)
    "notes.txt": (b"Wombats dig burrows at night.\n", "text/plain", "text/plain"),
    "readme.md": (b"# Heading\n\nPlatypus facts in *Markdown*.\n", None, "text/markdown"),
    "data.json": (b'{"animal": "echidna", "legs": 4}', "application/json", "application/json"),
    "table.csv": (b"name,habitat\nbilby,desert\n", None, "text/csv"),
    "page.html": (
        b"<html><head><style>.x{color:red}</style></head><body><p>Cassowary <b>feathers</b></p></body></html>",
        "text/html",
        "text/html",
    ),
    "paper.pdf": (minimal_pdf("Quokka habitats in the PDF"), "application/pdf", "application/pdf"),
    "image.png": (PNG, None, "image/png"),
}


async def upload(
    client: httpx.AsyncClient,
    files: Sequence[tuple[str, Any, str | None]],
    metadata: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    # Without a declared type httpx guesses one from the name (application/octet-stream when it cannot).
    form = [("files", (name, data, declared) if declared else (name, data)) for name, data, declared in files]
    data = {"metadata": metadata} if metadata is not None else None
    return await client.post("/api/v1/upload", files=form, data=data, headers=headers or {})


async def settle(client: httpx.AsyncClient, entry: dict[str, Any]) -> dict[str, Any]:
    """The object once the read model has it (waiting on the file's own position token)."""
    response = await client.get(
        f"/api/v1/data/{entry['object_id']}", headers={"X-Consistency-Token": entry["position"]}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_files_round_trip_byte_exact_with_sniffed_types_and_search(system: RunningSystem) -> None:
    client = system.admin
    listed = [(name, data, declared) for name, (data, declared, _) in FILES.items()]
    response = await upload(client, listed, metadata='{"batch": "zoo-1"}')
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["count"] == len(FILES) and body["failed"] == []
    assert [e["filename"] for e in body["uploaded"]] == list(FILES)
    for entry in body["uploaded"]:
        data, _, expected_type = FILES[entry["filename"]]
        assert entry["size"] == len(data)
        stored = await settle(client, entry)
        assert stored["content_type"] == expected_type
        assert stored["content_hash"] == hashlib.sha256(data).hexdigest()
        assert stored["metadata"]["filename"] == entry["filename"]
        assert stored["metadata"]["batch"] == "zoo-1" and stored["metadata"]["sha256"] == stored["content_hash"]
        content = await client.get(f"/api/v1/data/{entry['object_id']}/content")
        assert content.status_code == 200
        assert content.content == data
        assert content.headers["content-type"].startswith(expected_type)
        assert content.headers["etag"] == f'"{stored["content_hash"]}"'
        assert content.headers["content-length"] == str(len(data))

    # Text extraction: each kind is found by a word only its content has (HTML without its tags).
    for word, filename in [
        ("wombats", "notes.txt"),
        ("platypus", "readme.md"),
        ("echidna", "data.json"),
        ("bilby", "table.csv"),
        ("cassowary", "page.html"),
        ("quokka", "paper.pdf"),
    ]:
        found = (await client.get("/api/v1/search", params={"query": word})).json()
        assert [r["metadata"]["filename"] for r in found["results"]] == [filename], (word, found)
    assert (await client.get("/api/v1/search", params={"query": "color"})).json()["total"] == 0  # CSS stripped
    by_metadata = await client.get(
        "/api/v1/search", params={"modality": "metadata", "filters": '{"content_type": "image/png"}'}
    )
    assert [r["metadata"]["filename"] for r in by_metadata.json()["results"]] == ["image.png"]


async def test_range_and_if_none_match(system: RunningSystem) -> None:
    client = system.admin
    data = bytes(range(256)) * 40
    entry = (await upload(client, [("blob.bin", data, "application/octet-stream")])).json()["uploaded"][0]
    await settle(client, entry)
    url = f"/api/v1/data/{entry['object_id']}/content"
    etag = f'"{hashlib.sha256(data).hexdigest()}"'

    middle = await client.get(url, headers={"Range": "bytes=100-199"})
    assert middle.status_code == 206 and middle.content == data[100:200]
    assert middle.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert middle.headers["content-length"] == "100"
    tail = await client.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    rest = await client.get(url, headers={"Range": f"bytes={len(data) - 5}-"})
    assert rest.status_code == 206 and rest.content == data[-5:]
    past = await client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"
    assert past.json()["error"]["reason"] == "range_not_satisfiable"

    cached = await client.get(url, headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == etag
    changed = await client.get(url, headers={"If-None-Match": '"something-else"'})
    assert changed.status_code == 200 and changed.content == data


async def test_content_is_for_its_owner_and_admins_only(system: RunningSystem) -> None:
    await create_user(system.admin, "content-owner")
    await create_user(system.admin, "content-other")
    async with (
        await client_for(system.anonymous, "content-owner") as owner,
        await client_for(system.anonymous, "content-other") as other,
    ):
        entry = (await upload(owner, [("mine.txt", b"private words", None)])).json()["uploaded"][0]
        await settle(owner, entry)
        url = f"/api/v1/data/{entry['object_id']}/content"
        assert (await owner.get(url)).content == b"private words"
        assert (await system.admin.get(url)).content == b"private words"
        refused = await other.get(url)
        assert refused.status_code == 404 and refused.json()["error"]["code"] == 404
        assert (await system.anonymous.get(url)).status_code == 401


async def test_graphql_content_inline_for_small_text_else_url(system: RunningSystem) -> None:
    client = system.admin
    small, large = b"small kiwi text", b"x" * 2000  # the module's inline limit is 1000 bytes
    body = (await upload(client, [("s.txt", small, None), ("l.txt", large, None), ("p.png", PNG, None)])).json()
    for entry in body["uploaded"]:
        await settle(client, entry)
    contents = []
    for entry in body["uploaded"]:
        query = '{ dataObject(objectId: "OBJECT") { content contentUrl } }'.replace("OBJECT", entry["object_id"])
        answer = (await client.post("/api/graphql", json={"query": query})).json()
        contents.append(answer["data"]["dataObject"])
    assert contents[0] == {
        "content": "small kiwi text",
        "contentUrl": f"/api/v1/data/{body['uploaded'][0]['object_id']}/content",
    }
    assert contents[1]["content"] is None and contents[2]["content"] is None
    fetched = await client.get(contents[1]["contentUrl"])
    assert fetched.content == large


async def test_small_content_travels_in_the_log_and_large_content_in_the_blob_store(system: RunningSystem) -> None:
    client = system.admin
    small = "Numbat näps " * 60  # multi-byte UTF-8: ranges are of bytes
    large = "Bandicoot burrows " * 200
    assert len(small.encode()) <= EVENT_CONTENT_LIMIT < len(large.encode())
    for text, where in ((small, "inline"), (large, "blob")):
        created = await client.post("/api/v1/ingest", json={"content": text, "content_type": "text/plain"})
        assert created.status_code == 201, created.text
        entry = created.json()
        stored = await settle(client, entry)
        data = text.encode()
        digest = hashlib.sha256(data).hexdigest()
        assert stored["content_hash"] == digest and stored["size"] == len(data)
        assert stored["storage_location"] == f"{where}://sha256/{digest}"
        assert (blob_dir(system) / digest[:2] / digest).is_file() == (where == "blob")
        url = f"/api/v1/data/{entry['object_id']}/content"
        whole = await client.get(url)
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["etag"] == f'"{digest}"' and whole.headers["content-length"] == str(len(data))
        part = await client.get(url, headers={"Range": "bytes=5-9"})
        assert part.status_code == 206 and part.content == data[5:10]
        assert (await client.get(url, headers={"If-None-Match": f'"{digest}"'})).status_code == 304
        query = '{ dataObject(objectId: "OBJECT") { content } }'.replace("OBJECT", entry["object_id"])
        answer = (await client.post("/api/graphql", json={"query": query})).json()
        assert answer["data"]["dataObject"]["content"] == (text if len(data) <= 1000 else None)
        word = "numbat" if where == "inline" else "bandicoot"
        found = (await client.get("/api/v1/search", params={"query": word})).json()["results"]
        assert entry["object_id"] in [r["object_id"] for r in found]
        if where == "inline":  # nothing in the blob store to miss: never reported
            assert entry["object_id"] not in blobs_check(system).stdout


async def test_hostile_filenames_name_nothing_on_disk(system: RunningSystem) -> None:
    client = system.admin
    names = ["../../../../tmp/evil.txt", "..\\..\\windows\\evil.txt", "/etc/passwd", "..", "C:\\Users\\x\\report.txt"]
    files = [(name, f"hostile {i}".encode(), "text/plain") for i, name in enumerate(names)]
    response = await upload(client, files)
    assert response.status_code == 201, response.text
    stored = [e["filename"] for e in response.json()["uploaded"]]
    assert stored == ["evil.txt", "evil.txt", "passwd", "file-4", "report.txt"]
    assert not Path("/tmp/evil.txt").exists()
    for path in blob_dir(system).rglob("*"):
        if path.is_file() and not path.name.startswith("."):  # dot files: a write or /health's probe in flight
            assert len(path.name) == 64 and path.parent.name == path.name[:2], path
    for entry, (_, data, _) in zip(response.json()["uploaded"], files, strict=True):
        await settle(client, entry)
        assert (await client.get(f"/api/v1/data/{entry['object_id']}/content")).content == data


async def test_mismatched_type_and_oversized_file_fail_alone(system: RunningSystem) -> None:
    client = system.admin
    before = _incoming(system)
    oversized = _pseudo_random(FILE_LIMIT + 1, seed=7)
    response = await upload(
        client,
        [
            ("fine.txt", b"an ordinary file", "text/plain"),
            ("fake.txt", PNG, "text/plain"),  # a PNG declared as text
            ("fake.png", b"just words", "image/png"),  # text declared as an image
            ("nul.json", b'{"a": 1}\x00\x00\x00', "application/json"),  # binary declared as JSON
            ("big.bin", oversized, "application/octet-stream"),
        ],
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert [e["filename"] for e in body["uploaded"]] == ["fine.txt"] and body["count"] == 1
    failed = {f["filename"]: f["reason"] for f in body["failed"]}
    assert failed == {
        "fake.txt": "content_type_mismatch",
        "fake.png": "content_type_mismatch",
        "nul.json": "content_type_mismatch",
        "big.bin": "too_large",
    }
    for refused in (oversized, PNG, b"just words", b'{"a": 1}\x00\x00\x00'):
        digest = hashlib.sha256(refused).hexdigest()
        if refused is not PNG:  # the PNG was stored by an earlier test
            assert not (blob_dir(system) / digest[:2] / digest).exists()
    assert _incoming(system) == before  # no temp file left behind

    everything_failed = await upload(client, [("fake.png", b"just words", "image/png")])
    assert everything_failed.status_code == 422
    assert everything_failed.json()["error"]["details"]["failed"][0]["reason"] == "content_type_mismatch"


async def test_request_limits_refuse_the_whole_upload_and_keep_nothing(system: RunningSystem) -> None:
    client = system.admin
    before = _objects_and_blobs(system)
    too_many = await upload(client, [(f"f{i}.txt", f"file {i}".encode(), None) for i in range(MAX_FILES + 1)])
    assert too_many.status_code == 400 and too_many.json()["error"]["reason"] == "too_many_files", too_many.text
    long_name = await upload(client, [("n" * 5000 + ".txt", b"named at length", None)])  # a part's headers too long
    assert long_name.status_code == 400 and long_name.json()["error"]["reason"] == "validation_error", long_name.text
    halves = [(f"half{i}.bin", _pseudo_random(REQUEST_LIMIT // 2 + MIB, seed=i), None) for i in range(2)]
    too_big = await upload(client, halves)
    assert too_big.status_code == 413, too_big.text
    assert too_big.json()["error"]["reason"] == "too_large"
    assert _objects_and_blobs(system) == before

    not_multipart = await client.post("/api/v1/upload", json={"files": []})
    assert not_multipart.status_code == 415
    cut = await client.post(
        "/api/v1/upload",
        content=b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.txt"\r\n\r\nhalf',
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert cut.status_code == 400 and cut.json()["error"]["code"] == 400
    unknown = await upload(client, [("a.txt", b"x", None)], metadata="[1, 2]")
    assert unknown.status_code == 400
    no_files = await client.post("/api/v1/upload", data={"metadata": "{}"}, files={"other": ("x", b"y")})
    assert no_files.status_code == 400
    assert _objects_and_blobs(system) == before


async def test_one_idempotency_key_covers_the_batch(system: RunningSystem) -> None:
    client = system.admin
    files = [("one.txt", b"first of a batch", None), ("two.txt", b"second of a batch", None)]
    headers = {"Idempotency-Key": "upload-batch-1"}
    first = (await upload(client, files, headers=headers)).json()
    again = (await upload(client, files, headers=headers)).json()
    assert [e["object_id"] for e in first["uploaded"]] == [e["object_id"] for e in again["uploaded"]]
    assert len({e["object_id"] for e in first["uploaded"]}) == 2
    for entry in again["uploaded"]:
        await settle(client, entry)
    found = (await client.get("/api/v1/search", params={"query": '"of a batch"'})).json()
    assert found["total"] == 2


async def test_a_50_mib_file_round_trips_with_the_api_memory_bounded(system: RunningSystem, tmp_path: Path) -> None:
    client = system.admin
    size = 50 * MIB
    source = tmp_path / "large.bin"
    digest = hashlib.sha256()
    rng = random.Random(50)
    with source.open("wb") as f:
        for _ in range(size // MIB):
            chunk = rng.randbytes(MIB)
            digest.update(chunk)
            f.write(chunk)
    api = _api_pid(system)
    peak_before = _peak_rss(api)
    with source.open("rb") as f:
        response = await upload(client, [("large.bin", f, "application/octet-stream")])
    assert response.status_code == 201, response.text
    grown = _peak_rss(api) - peak_before
    # The body is streamed to disk in chunks: the API's peak RSS must not grow by anything near the
    # file's size (it would grow by >= 50 MiB if the file were buffered).
    assert grown < 20 * MIB, f"peak RSS grew by {grown / MIB:.1f} MiB for a 50 MiB upload"
    entry = response.json()["uploaded"][0]
    await settle(client, entry)
    received = hashlib.sha256()
    length = 0
    async with client.stream("GET", f"/api/v1/data/{entry['object_id']}/content") as streamed:
        assert streamed.status_code == 200 and streamed.headers["content-length"] == str(size)
        async for chunk in streamed.aiter_bytes():
            received.update(chunk)
            length += len(chunk)
    assert length == size and received.hexdigest() == digest.hexdigest()
    assert streamed.headers["etag"] == f'"{digest.hexdigest()}"'


async def test_a_missing_blob_is_reported_not_a_500(system: RunningSystem) -> None:
    client = system.admin
    entry = (await upload(client, [("doomed.txt", b"this blob will vanish", None)])).json()["uploaded"][0]
    stored = await settle(client, entry)
    path = blob_dir(system) / stored["content_hash"][:2] / stored["content_hash"]
    path.unlink()
    try:
        gone = await client.get(f"/api/v1/data/{entry['object_id']}/content")
        assert gone.status_code == 410 and gone.json()["error"]["reason"] == "content_missing"

        async def reported() -> bool:
            body = (await client.get("/health")).json()
            return body["missing_blobs"] == 1 and body["status"] == "degraded"

        await eventually(reported, timeout=60, what="/health to report the missing blob")
        check = blobs_check(system)
        assert check.returncode == 1, check.stdout + check.stderr
        assert entry["object_id"] in check.stdout and stored["content_hash"] in check.stdout
    finally:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"this blob will vanish")
    fixed = blobs_check(system)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr


def _pseudo_random(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _incoming(system: RunningSystem) -> list[Path]:
    return sorted(blob_dir(system).glob(".incoming-*"))


def _objects_and_blobs(system: RunningSystem) -> tuple[list[Path], list[Path]]:
    files = sorted(p for p in blob_dir(system).rglob("*") if p.is_file())
    return files, _incoming(system)


def _api_pid(system: RunningSystem) -> int:
    """The API process serving ``system`` (a child of this process running `infra.cli api` on its port:
    the session may run other systems beside the module's)."""
    me = os.getpid()
    port = f"PIPELINE_PORT={system.admin.base_url.port}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\x00")
            environ = (entry / "environ").read_bytes().split(b"\x00")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == me and cmdline[-2:] == [b"api", b""] and port in environ:
            found.append(int(entry.name))
    assert len(found) == 1, found
    return found[0]


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def blobs_check(system: RunningSystem) -> subprocess.CompletedProcess[str]:
    """`pipeline blobs check` against the module's system."""
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "blobs", "check"],
        env={**os.environ, **system.env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
