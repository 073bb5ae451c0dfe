"""Content-addressed blob store on a local directory: the bytes live here, events hold the hash.

(Small content is not here: it travels in its event and the read model keeps it; see
``object_content`` and commands.data.inline_content.)

A blob is durable before anyone may name it: the bytes go to a temp file in the blob's directory,
which is fsynced, renamed into place and then the directory is fsynced, so a crash after the event
that names the blob was produced cannot leave the log pointing at nothing. An existing blob is never
overwritten (same hash, same bytes).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

BLOB_PREFIX = "blob://sha256/"
READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class StoredBlob:
    content_hash: str  # sha256, hex
    size: int
    location: str  # "blob://sha256/<hash>"


class BlobNotFound(LookupError):
    pass


class BlobTooLarge(ValueError):
    pass


_HASH = re.compile(r"[0-9a-f]{64}")


def is_hash(content_hash: str) -> bool:
    """A sha256 in lower-case hex: the only names the store has (no paths from outside)."""
    # One regex match in C: a rebuild asks once per object (8.6 us as a generator over the characters, 0.7 us so).
    return isinstance(content_hash, str) and _HASH.fullmatch(content_hash) is not None


class BlobWriter:
    """One blob written in pieces: hashed while streaming, bounded by ``limit`` bytes.

    ``commit()`` makes it durable under its hash; ``abort()`` (or an exception inside ``with``)
    leaves nothing behind. The client's filename is never used: the name is the hash.
    """

    def __init__(self, store: LocalBlobStore, limit: int | None = None) -> None:
        self._store = store
        self._limit = limit
        self._hash = hashlib.sha256()
        self.size = 0
        store.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=store.root, prefix=".incoming-")
        self._tmp = Path(name)
        self._file = os.fdopen(fd, "wb")
        self.head = b""  # the first bytes, for sniffing the content type

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; BlobTooLarge (and nothing kept) past the limit."""
        self.size += len(chunk)
        if self._limit is not None and self.size > self._limit:
            self.abort()
            raise BlobTooLarge(f"larger than {self._limit} bytes")
        if len(self.head) < 8192:
            self.head += chunk[: 8192 - len(self.head)]
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self) -> StoredBlob:
        """fsync, move into place under the hash (unless already there), fsync the directory."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = self._hash.hexdigest()
        path = self._store.path(digest)
        if path.exists():
            self._tmp.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp, path)
            _fsync_dir(path.parent)
            _fsync_dir(self._store.root)
        return StoredBlob(digest, self.size, BLOB_PREFIX + digest)

    def abort(self) -> None:
        """Forget the bytes written so far."""
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None:
            self.abort()


class LocalBlobStore:
    """Blobs at ``<root>/<hash[:2]>/<hash>``; writing the same bytes twice stores them once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_text = str(root)

    def put(self, data: bytes) -> StoredBlob:
        """Store ``data`` durably and return its address."""
        with self.writer() as writer:
            writer.write(data)
            return writer.commit()

    def writer(self, limit: int | None = None) -> BlobWriter:
        """A writer for one blob streamed in pieces (see BlobWriter)."""
        return BlobWriter(self, limit)

    def get(self, content_hash: str) -> bytes:
        """The bytes with this sha256; BlobNotFound if absent."""
        if not is_hash(content_hash):
            raise BlobNotFound(content_hash)
        try:
            return self.path(content_hash).read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFound(content_hash) from exc

    def find(self, content_hash: str) -> bytes | None:
        """The bytes with this sha256, or None."""
        try:
            return self.get(content_hash)
        except BlobNotFound:
            return None

    def head(self, content_hash: str, limit: int) -> bytes | None:
        """At most the first ``limit`` bytes of the blob, or None when absent."""
        if not is_hash(content_hash):
            return None
        # The path as text (what ``path`` gives): pathlib's joins cost more than reading a small blob, and
        # a rebuild reads one per object.
        try:
            with open(os.path.join(self._root_text, content_hash[:2], content_hash), "rb") as f:
                return f.read(limit)
        except FileNotFoundError:
            return None

    def exists(self, content_hash: str) -> bool:
        """Whether the store holds this blob."""
        return is_hash(content_hash) and self.path(content_hash).is_file()

    def read_range(self, content_hash: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start..end`` (inclusive) in chunks; BlobNotFound if absent."""
        if not is_hash(content_hash):
            raise BlobNotFound(content_hash)
        try:
            f = self.path(content_hash).open("rb")
        except FileNotFoundError as exc:
            raise BlobNotFound(content_hash) from exc
        return _chunks(f, start, end)

    def path(self, digest: str) -> Path:
        """Where the blob with this hash lives (whether or not it exists)."""
        return self.root / digest[:2] / digest


def object_content(blobs: LocalBlobStore, row: Mapping[str, Any]) -> bytes:
    """The bytes of a data object read-model row selected with its ``content``: the text the log
    carried (small content, commands.data.inline_content), else the blob; BlobNotFound if absent."""
    inline = row.get("content")
    if inline is not None:
        return str(inline).encode()
    return blobs.get(row["content_hash"])


def _chunks(f: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    with f:
        f.seek(start)
        left = end - start + 1
        while left > 0:
            chunk = f.read(min(READ_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
