"""Content-addressed blob store on a local directory: the bytes live here, events hold the hash."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StoredBlob:
    content_hash: str  # sha256, hex
    size: int
    location: str  # "blob://sha256/<hash>"


class BlobNotFound(LookupError):
    pass


class LocalBlobStore:
    """Blobs at ``<root>/<hash[:2]>/<hash>``; writing the same bytes twice stores them once."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, data: bytes) -> StoredBlob:
        """Store ``data`` (atomically: temp file, then rename) and return its address."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return StoredBlob(digest, len(data), f"blob://sha256/{digest}")

    def get(self, content_hash: str) -> bytes:
        """The bytes with this sha256; BlobNotFound if absent."""
        if len(content_hash) != 64 or any(c not in "0123456789abcdef" for c in content_hash):
            raise BlobNotFound(content_hash)
        try:
            return self._path(content_hash).read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFound(content_hash) from exc

    def find(self, content_hash: str) -> bytes | None:
        """The bytes with this sha256, or None."""
        try:
            return self.get(content_hash)
        except BlobNotFound:
            return None

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest
