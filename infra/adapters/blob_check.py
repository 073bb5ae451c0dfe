"""Blobs the log names but the store lacks: reported by `/health` and `pipeline blobs check`.

A blob is fsynced before the event naming it is produced (infra.adapters.blobstore), so a missing one means
the blob directory was damaged, restored from an older backup, or pointed elsewhere: an operator's
matter, told plainly rather than as a 500 when someone reads the object.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from infra.adapters.blobstore import LocalBlobStore
from infra.adapters.postgres import open_pool
from infra.runtime.progress import Progress
from infra.runtime.settings import Settings
from projections.data_objects import content_hashes


@dataclass(frozen=True)
class MissingBlob:
    object_id: str
    content_hash: str


PROGRESS_EVERY = 1000  # blobs looked at between progress calls


async def missing_blobs(
    pool: AsyncConnectionPool, blobs: LocalBlobStore, progress: Callable[[int, int], None] | None = None
) -> list[MissingBlob]:
    """Every live object whose content the blob store lacks (one stat per distinct hash, off the loop);
    ``progress(done, total)`` is called from that thread every PROGRESS_EVERY blobs and at the end."""
    async with pool.connection() as conn:
        named = await content_hashes(conn)

    def absent() -> set[str]:
        hashes = sorted({h for _, h in named})
        gone = set()
        for done, content_hash in enumerate(hashes, 1):
            if not blobs.exists(content_hash):
                gone.add(content_hash)
            if progress is not None and (done % PROGRESS_EVERY == 0 or done == len(hashes)):
                progress(done, len(hashes))
        if progress is not None and not hashes:
            progress(0, 0)
        return gone

    gone = await asyncio.to_thread(absent)
    return [MissingBlob(object_id, h) for object_id, h in named if h in gone]


def run_check(settings: Settings) -> int:
    """`pipeline blobs check`: list missing blobs; exit 1 when there are any, 0 when none."""
    if not settings.database.url:
        raise SystemExit("missing settings: DATABASE_URL (or start everything with `make run`)")
    missing = asyncio.run(_check(settings))
    for blob in missing:
        print(f"missing: object {blob.object_id} content sha256:{blob.content_hash}")
    if missing:
        print(f"{len(missing)} object(s) name content the blob store lacks", file=sys.stderr)
        return 1
    print(f"ok: every object's content is in {settings.storage.blob_path}")
    return 0


async def _check(settings: Settings) -> list[MissingBlob]:
    pool = await open_pool(settings.database.url, settings.database.schema, min_size=1, max_size=1)
    try:
        bar = Progress(0, "blobs check", unit="blobs")
        return await missing_blobs(pool, LocalBlobStore(settings.storage.blob_path), bar.track)
    finally:
        await pool.close()
