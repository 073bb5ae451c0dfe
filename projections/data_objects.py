"""The data_objects read model: one row per live object; deleted objects drop out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypedDict

import msgspec
import orjson
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import dict_row

from projections.events import EventRecord
from projections.projector import BatchHandler, Handler, Projector, apply_runs, columns
from projections.search import SNIPPET_SOURCE_CHARS
from projections.text_extraction import extract_text, wants_whole_content


def object_type(content_type: str) -> str:
    """A coarse kind for the spec's ``object_type``: text, json, image, audio, video or binary."""
    main, _, sub = content_type.partition("/")
    if main == "text":
        return "text"
    if sub == "json" or sub.endswith("+json"):
        return "json"
    if main in {"image", "audio", "video"}:
        return main
    return "binary"


# content hash, content type -> the bytes extraction needs (bounded, see text_extraction), None when absent
ContentLoader = Callable[[str, str], bytes | None]


def searchable_text(content_type: str, content: bytes | None, metadata: dict[str, Any]) -> str:
    """What full-text search sees: the content's text (projections.text_extraction) and the metadata's values."""
    parts = [str(value) for value in metadata.values() if isinstance(value, str | int | float)]
    if content is not None:
        parts.append(extract_text(content_type, content))
    return "\n".join(parts).replace("\x00", " ")  # PostgreSQL text takes no NUL (a PDF's text may have one)


INGESTED = "DataObject.Ingested"
# Texts longer than this get their search vector from bounded_tsvector (migration 0013): the vector of a
# text this short stays well under PostgreSQL's 1 MiB whatever its words, and pays no exception block.
BOUNDED_TSVECTOR_BYTES = 64 * 1024
ANNOTATED = "DataObject.Annotated"


class DataObjectsProjector(Projector):
    name = "data_objects"
    tables = ("data_objects",)

    def __init__(self, load_content: ContentLoader | None = None, language: str = "simple") -> None:
        self.load_content = load_content or (lambda _hash, _type: None)
        self.language = language  # the text search configuration; search queries must use the same

    def handlers(self) -> dict[str, Handler]:
        return {"DataObject.Deleted": self.on_deleted}

    def batch_handlers(self) -> dict[str, BatchHandler]:
        return {INGESTED: self.on_ingested, ANNOTATED: self.on_annotated}

    async def apply_many(self, cur: AsyncCursor[Any], records: Sequence[EventRecord]) -> None:
        """As every projector, except that an object ingested and annotated in the same batch (labels given
        at ingest, or any rebuild) is inserted as of its last annotation there: its row is written once, not
        written and rewritten. (A rewrite is a new tuple in every index, the GIN ones too: in a 200,000-event
        rebuild 50,000 of 50,000 objects were rewritten so, none of them in place.)"""
        ingested = {r.aggregate_id for r in records if r.type == INGESTED}
        last: dict[str, EventRecord] = {}
        rest: list[EventRecord] = []
        for record in records:
            if record.type == ANNOTATED and record.aggregate_id in ingested:
                last[record.aggregate_id] = record
            else:
                rest.append(record)
        batched: dict[str, BatchHandler] = {
            INGESTED: partial(self.on_ingested, annotated=last),
            ANNOTATED: self.on_annotated,
        }
        await apply_runs(cur, rest, batched, self.handlers())

    async def on_ingested(
        self, cur: AsyncCursor[Any], records: list[EventRecord], annotated: Mapping[str, EventRecord] | None = None
    ) -> None:
        """Insert the objects; ``annotated``: object -> its last annotation, to be applied with its insert."""
        latest = [(annotated or {}).get(r.aggregate_id, r) for r in records]
        if all(r.event.content is not None and not wants_whole_content(r.event.content_type) for r in records):
            # Carried in the events (small, see commands.data.inline_content): nothing to read back, and
            # extracting a few KiB of text costs less than a hop to a thread.
            texts = [self._text(r.event) for r in records]
        else:  # reading blobs and extracting (a PDF can take a while) stay off the projection's loop
            texts = await asyncio.to_thread(lambda: [self._text(r.event) for r in records])
        rows = (
            (
                r.aggregate_id,
                object_type(r.event.content_type),
                r.event.content_type,
                r.event.content_hash,
                r.event.location,
                r.event.size,
                orjson.dumps(r.event.metadata).decode(),
                r.event.owner,
                last.version,
                r.event.timestamp,
                last.event.timestamp,
                text,
                r.event.content,
            )
            for r, last, text in zip(records, latest, texts, strict=True)
        )
        await cur.execute(
            "INSERT INTO data_objects (object_id, object_type, content_type, content_hash, storage_location, size,"
            " metadata, owner, version, created_at, updated_at, search, search_text, content)"
            " SELECT id, kind, type, hash, location, size, metadata, owner, version, at, updated,"
            # A long text's vector may exceed PostgreSQL's 1 MiB: bounded_tsvector (migration 0013) shortens it.
            " CASE WHEN octet_length(text) > %s THEN bounded_tsvector(%s::regconfig, text)"
            " ELSE to_tsvector(%s::regconfig, text) END, left(text, %s), content"
            " FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::text[], %b::text[], %b::int8[], %b::jsonb[],"
            " %b::text[], %b::int4[], %b::timestamptz[], %b::timestamptz[], %b::text[], %b::text[])"
            " AS u(id, kind, type, hash, location, size, metadata, owner, version, at, updated, text, content)",
            [BOUNDED_TSVECTOR_BYTES, self.language, self.language, SNIPPET_SOURCE_CHARS, *columns(rows, 13)],
        )

    def _text(self, e: Any) -> str:
        return searchable_text(e.content_type, self._content(e), e.metadata)

    def _content(self, e: Any) -> bytes | None:
        return e.content.encode() if e.content is not None else self.load_content(e.content_hash, e.content_type)

    async def on_annotated(self, cur: AsyncCursor[Any], records: list[EventRecord]) -> None:
        latest = {r.aggregate_id: (r.aggregate_id, r.version, r.event.timestamp) for r in records}  # one per row
        await cur.execute(
            "UPDATE data_objects d SET version = u.version, updated_at = u.at"
            " FROM unnest(%b::uuid[], %b::int4[], %b::timestamptz[]) AS u(id, version, at) WHERE d.object_id = u.id",
            columns(latest.values(), 3),
        )

    async def on_deleted(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        await cur.execute("DELETE FROM data_objects WHERE object_id = %s", (record.aggregate_id,))


_COLUMNS = (
    "object_id::text AS object_id, object_type, content_type, content_hash, storage_location, size, metadata,"
    " owner, version, created_at, updated_at"
)


async def get_data_object(
    conn: AsyncConnection[Any], object_id: str, with_content: bool = False
) -> dict[str, Any] | None:
    """One object row, or None; ``with_content`` adds "content": the text carried in the log, or None
    when the blob store holds the content."""
    columns = f"{_COLUMNS}, content" if with_content else _COLUMNS
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {columns} FROM data_objects WHERE object_id = %s", (object_id,))
        return await cur.fetchone()


async def content_hashes(conn: AsyncConnection[Any]) -> list[tuple[str, str]]:
    """(object_id, content_hash) of every live object whose content the blob store holds (the others
    carried theirs in the log, kept in the ``content`` column): what the log says the store has."""
    cur = await conn.execute(
        "SELECT object_id::text, content_hash FROM data_objects WHERE content IS NULL ORDER BY object_id"
    )
    return [(str(object_id), str(content_hash)) for object_id, content_hash in await cur.fetchall()]


class AnnotationRow(TypedDict):
    annotation_id: str
    annotator_id: str
    annotation_type: str
    content: Any
    confidence: float
    source: str
    created_at: datetime


class ObjectRow(TypedDict):
    """A data_objects row (the columns of get_data_object) with its annotations, oldest first."""

    object_id: str
    object_type: str
    content_type: str
    content_hash: str
    storage_location: str
    size: int
    metadata: dict[str, Any]
    owner: str
    version: int
    created_at: datetime
    updated_at: datetime
    annotations: list[AnnotationRow]


# The object and its annotations as one JSON document, built by PostgreSQL and decoded by msgspec into
# ObjectRow: one text column instead of a dozen typed ones (psycopg's per-column loaders, the stdlib json
# module for metadata) halves the client's CPU for this read; the values are the same (timestamps carry
# the session's offset either way, a float confidence stays a float).
_OBJECT_JSON = (
    "SELECT json_build_object('object_id', object_id, 'object_type', object_type, 'content_type', content_type,"
    " 'content_hash', content_hash, 'storage_location', storage_location, 'size', size, 'metadata', metadata,"
    " 'owner', owner, 'version', version, 'created_at', created_at, 'updated_at', updated_at, 'annotations',"
    " COALESCE((SELECT json_agg(json_build_object('annotation_id', a.annotation_id, 'annotator_id', a.annotator_id,"
    " 'annotation_type', a.annotation_type, 'content', a.content, 'confidence', a.confidence, 'source', a.source,"
    " 'created_at', a.created_at) ORDER BY a.created_at, a.annotation_id)"
    " FROM annotations a WHERE a.object_id = data_objects.object_id), '[]'))::text"
    " FROM data_objects WHERE object_id = %s"
)
_OBJECT_ROW = msgspec.json.Decoder(ObjectRow)


async def get_data_object_with_annotations(conn: AsyncConnection[Any], object_id: str) -> ObjectRow | None:
    """One object row with its annotations (list under "annotations", as annotations_of gives them), in one query.

    Prepared (the read every client repeats): planning the annotations aggregate cost PostgreSQL more than
    running it. Prepared statements follow a rebuild's schema swap (PostgreSQL re-plans when the
    search_path's schema or a table it read is replaced).
    """
    cur = await conn.execute(_OBJECT_JSON, (object_id,), prepare=True)
    row = await cur.fetchone()
    return None if row is None else _OBJECT_ROW.decode(row[0])
