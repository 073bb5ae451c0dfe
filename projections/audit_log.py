"""The audit log: every event, with its metadata and hash chain, in one global sequence; and its queries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import dict_row

from projections.events import EventRecord
from projections.projector import Projector, columns, copy_rows
from projections.stored_json import plain


class AuditLogProjector(Projector):
    name = "audit_log"
    tables = ("audit_log",)
    fill_deferred_constraints = ("audit_log_aggregate_id_aggregate_version_key",)  # an aggregate version: once

    async def apply_many(self, cur: AsyncCursor[Any], records: Sequence[EventRecord]) -> None:
        """Every event, in order (its global sequence follows the order of writing), in one statement.

        Partitions are applied by concurrent transactions, and a sequence hands out numbers when rows
        are written, not when they become visible: without more, a reader paging by ``seq`` could see
        seq 11 of one transaction committed and never see seq 10 of another that commits a moment
        later. So the writers of one audit_log take its numbers one transaction at a time (a lock
        held until commit; this projector runs last, so it is held only for the rest of the
        transaction): a row becomes visible only after every row numbered before it.
        """
        await cur.execute(SEQUENCE_LOCK)
        if self.bulk:  # COPY numbers the rows (seq's default) in the order given, as ORDER BY n does below
            at = datetime.now(UTC)  # the time of applying, as clock_timestamp() gives it below
            await copy_rows(cur, "audit_log", _COPIED, ((*_row(record), at) for record in records))
            return
        await cur.execute(
            "INSERT INTO audit_log (event_id, aggregate_id, aggregate_version, event_type, schema_version,"
            " command_id, correlation_id, causation_id, actor, actor_role, occurred_at, prev_hash, hash,"
            " topic_partition, topic_offset, payload, recorded_at)"
            " SELECT e, a, v, t, s, c, co, ca, ac, r, o, p, h, tp, tof, pl,"
            # clock_timestamp(), not now(): the time of applying, which the lag figures are made of
            " clock_timestamp() FROM unnest(%b::text[], %b::uuid[], %b::int4[], %b::text[], %b::int4[], %b::text[],"
            " %b::text[], %b::text[], %b::text[], %b::text[], %b::timestamptz[], %b::text[], %b::text[], %b::int4[],"
            " %b::int8[], %b::jsonb[]) WITH ORDINALITY AS u(e, a, v, t, s, c, co, ca, ac, r, o, p, h, tp, tof, pl, n)"
            " ORDER BY n",
            columns((_row(record) for record in records), 16),
        )


# An advisory lock per audit_log table (its OID, so schemas side by side do not wait on each other),
# above the small constant ids used elsewhere (infra.adapters.postgres, .credentials).
SEQUENCE_LOCK = "SELECT pg_advisory_xact_lock((1::int8 << 40) | 'audit_log'::regclass::oid::int8)"


def _row(record: EventRecord) -> tuple[Any, ...]:
    h = record.headers
    return (
        h["event_id"],
        record.aggregate_id,
        record.version,
        record.type,
        int(h.get("schema_version", "1")),
        h["command_id"],
        h["correlation_id"],
        h["causation_id"],
        h["actor"],
        h["actor_role"],
        record.event.timestamp,
        h["prev_hash"],
        h["hash"],
        record.partition,
        record.offset,
        record.state.decode(),  # the stored JSON as it is (it decoded, so it is JSON)
    )


# The columns and types of ``_row``'s values and the time of applying, for copy_rows.
_COPIED = (
    ("event_id", "text"),
    ("aggregate_id", "uuid"),
    ("aggregate_version", "int4"),
    ("event_type", "text"),
    ("schema_version", "int4"),
    ("command_id", "text"),
    ("correlation_id", "text"),
    ("causation_id", "text"),
    ("actor", "text"),
    ("actor_role", "text"),
    ("occurred_at", "timestamptz"),
    ("prev_hash", "text"),
    ("hash", "text"),
    ("topic_partition", "int4"),
    ("topic_offset", "int8"),
    ("payload", "jsonb"),
    ("recorded_at", "timestamptz"),
)


# Columns of one audit event as the history API, GraphQL and `pipeline audit export` show it.
_EVENT_COLUMNS = (
    "seq, event_id, aggregate_id::text AS aggregate_id, aggregate_version, event_type, schema_version, command_id,"
    " correlation_id, causation_id, actor, actor_role, occurred_at, recorded_at, prev_hash, hash, topic_partition,"
    " topic_offset, payload::text AS payload"
)
# Fields of a stored event's state that the audit view shows under their own names, not under "data".
_ENVELOPE_FIELDS = frozenset({"timestamp", "originator_topic"})
# An object's bytes stay out of the history whether the blob store or its event holds them (small ones
# travel inline, issue 8); its hash and location are in, and the content endpoint serves the bytes.
_BYTES = ("content", "DataObject.Ingested")


@dataclass(frozen=True)
class AuditFilters:
    """What the cross-aggregate queries filter on; ``occurred_from`` inclusive, ``occurred_to`` exclusive."""

    actor: str | None = None
    event_type: str | None = None
    aggregate_type: str | None = None
    aggregate_id: str | None = None
    occurred_from: datetime | None = None
    occurred_to: datetime | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("actor = %s", self.actor),
            ("event_type = %s", self.event_type),
            ("split_part(event_type, '.', 1) = %s", self.aggregate_type),
            ("aggregate_id = %s", self.aggregate_id),
            ("occurred_at >= %s", self.occurred_from),
            ("occurred_at < %s", self.occurred_to),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        return " AND ".join(clauses) or "true", params


def aggregate_type(event_type: str) -> str:
    """``DataObject`` of ``DataObject.Ingested``: the aggregate class an event belongs to."""
    return event_type.split(".", 1)[0]


def event_view(row: dict[str, Any]) -> dict[str, Any]:
    """One audit row as the API and the export show it: metadata, hash chain, position and the event's data.

    ``data`` is the event's stored state (blobs appear by hash and location, never their bytes), less
    the fields shown beside it (its timestamp, the aggregate class of a creation).
    """
    payload = orjson.loads(row["payload"])
    return {
        "seq": row["seq"],
        "event_id": row["event_id"],
        "aggregate_id": row["aggregate_id"],
        "aggregate_type": aggregate_type(row["event_type"]),
        "version": row["aggregate_version"],
        "event_type": row["event_type"],
        "schema_version": row["schema_version"],
        "timestamp": row["occurred_at"],
        "recorded_at": row["recorded_at"],
        "actor": row["actor"],
        "actor_role": row["actor_role"],
        "command_id": row["command_id"],
        "correlation_id": row["correlation_id"],
        "causation_id": row["causation_id"],
        "prev_hash": row["prev_hash"],
        "hash": row["hash"],
        "position": f"{row['topic_partition']}:{row['topic_offset']}",
        "data": {
            k: plain(v) for k, v in payload.items() if k not in _ENVELOPE_FIELDS and (k, row["event_type"]) != _BYTES
        },
    }


async def history_rows(conn: AsyncConnection[Any], aggregate_id: str, after_version: int, limit: int) -> list[dict]:
    """An aggregate's events after ``after_version``, in version order, at most ``limit``."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_EVENT_COLUMNS} FROM audit_log WHERE aggregate_id = %s AND aggregate_version > %s"
            " ORDER BY aggregate_version LIMIT %s",
            (aggregate_id, after_version, limit),
        )
        return await cur.fetchall()


async def creation_row(conn: AsyncConnection[Any], aggregate_id: str) -> dict[str, Any] | None:
    """The aggregate's first event (event type and decoded payload), or None: who owns it follows from it."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT event_type, payload FROM audit_log WHERE aggregate_id = %s ORDER BY aggregate_version LIMIT 1",
            (aggregate_id,),
        )
        return await cur.fetchone()


async def search_rows(conn: AsyncConnection[Any], filters: AuditFilters, after_seq: int, limit: int) -> list[dict]:
    """Events across aggregates in global sequence order after ``after_seq``, filtered, at most ``limit``."""
    where, params = filters.where()
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_EVENT_COLUMNS} FROM audit_log WHERE seq > %s AND {where} ORDER BY seq LIMIT %s",
            (after_seq, *params, limit),
        )
        return await cur.fetchall()


async def stored_events(
    conn: AsyncConnection[Any], aggregate_id: str, until_version: int | None = None
) -> list[tuple[int, str, datetime, bytes]]:
    """(version, event type, timestamp, stored state) of an aggregate's events in order, to fold them again."""
    cur = await conn.execute(
        "SELECT aggregate_version, event_type, occurred_at, payload::text FROM audit_log"
        " WHERE aggregate_id = %s AND aggregate_version <= %s ORDER BY aggregate_version",
        (aggregate_id, until_version if until_version is not None else 2**31 - 1),
    )
    return [(v, t, at, state.encode()) for v, t, at, state in await cur.fetchall()]


async def export_rows(
    conn: AsyncConnection[Any], filters: AuditFilters, batch: int = 1000
) -> AsyncIterator[dict[str, Any]]:
    """Every event the filters select in global sequence order, read by a server-side cursor (bounded memory).

    ``conn`` must not be in autocommit mode with another transaction open: this opens its own.
    """
    where, params = filters.where()
    async with conn.transaction(), conn.cursor(name="audit_export", row_factory=dict_row) as cur:
        cur.itersize = batch
        await cur.execute(f"SELECT {_EVENT_COLUMNS} FROM audit_log WHERE {where} ORDER BY seq", params)
        async for row in cur:
            yield row


async def count_rows(conn: AsyncConnection[Any], filters: AuditFilters) -> int:
    """How many events the filters select (for progress)."""
    where, params = filters.where()
    cur = await conn.execute(f"SELECT count(*) FROM audit_log WHERE {where}", params)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def rows_at_offsets(
    conn: AsyncConnection[Any], partition: int, start: int, end: int, aggregate_id: str | None = None
) -> dict[int, dict[str, Any]]:
    """topic offset -> audit row (what the log also says, payload as text) of events at [start, end) of a partition."""
    where = " AND aggregate_id = %s" if aggregate_id else ""
    params: tuple[Any, ...] = (partition, start, end, *((aggregate_id,) if aggregate_id else ()))
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT topic_offset, event_id, aggregate_id::text AS aggregate_id, aggregate_version, event_type,"
            " command_id, correlation_id, causation_id, actor, actor_role, occurred_at, prev_hash, hash,"
            " payload::text AS payload FROM audit_log WHERE topic_partition = %s AND topic_offset >= %s"
            f" AND topic_offset < %s{where} ORDER BY topic_offset",
            params,
        )
        return {row.pop("topic_offset"): row for row in await cur.fetchall()}


async def rows_outside(conn: AsyncConnection[Any], partitions: list[int], aggregate_id: str | None = None) -> int:
    """Audit rows that name a partition the log does not have."""
    where = " AND aggregate_id = %s" if aggregate_id else ""
    params: tuple[Any, ...] = (partitions, *((aggregate_id,) if aggregate_id else ()))
    cur = await conn.execute(f"SELECT count(*) FROM audit_log WHERE NOT topic_partition = ANY(%s){where}", params)
    row = await cur.fetchone()
    return int(row[0]) if row else 0
