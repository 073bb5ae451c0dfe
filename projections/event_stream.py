"""The audit log read as a stream: positions, filters, and the two reads a stream needs.

Position. The audit log's ``seq`` is a ``bigserial`` taken when a row is inserted, not when its
transaction commits, and the runner commits the partitions' batches in parallel transactions (and
several projection workers may share the partitions). So a row with a smaller ``seq`` can become
visible after one with a larger: a reader resuming "after seq N" would skip it. Within one
partition, though, rows commit in offset order: one runner owns a partition at a time, each batch
locks the partition's row in ``projection_positions`` first and applies only offsets past the
stored one. A stream's position is therefore a vector, the last offset delivered per partition,
written ``"0:41,1:17"`` (partitions missing from it start at the beginning). Reading "after" it,
partition by partition and in offset order, misses nothing and repeats nothing; it is also the
events topic's own coordinate, so it survives a rebuild of the read models, which renumbers ``seq``.
The position token of a write (``"<partition>:<offset>"``) is a valid stream position too.

Visibility: admins see every event; anyone else the events of aggregates they own: data objects
whose ``Ingested.owner`` they are, executions whose ``Submitted.submitter`` they are, and their own
user aggregate. The owner comes from the aggregate's first event in the audit log (a deleted
object's row is gone from ``data_objects``, its history is not).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from eventsourcing.domain import Aggregate
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from domain.admin_roster import AdminRoster
from domain.conversation import Conversation
from domain.data_object import DataObject
from domain.execution import Execution
from domain.inbox import Inbox
from domain.user import User
from projections.stored_json import plain

MAX_PARTITIONS = 1024  # entries of a position vector
MAX_OFFSET = 2**63 - 1


def event_types() -> dict[str, frozenset[str]]:
    """Aggregate type -> its event types (``DataObject.Ingested``, ...), from the domain itself."""
    found: dict[str, frozenset[str]] = {}
    # Every aggregate whose events the log carries: a type the stream delivers can be asked for by name.
    for aggregate in (DataObject, Execution, User, Conversation, Inbox, AdminRoster):
        names = [
            f"{aggregate.__name__}.{name}"
            for name, value in vars(aggregate).items()
            if isinstance(value, type) and issubclass(value, Aggregate.Event)
        ]
        found[aggregate.__name__] = frozenset(names)
    return found


EVENT_TYPES = event_types()


def expand_types(names: Iterable[str]) -> frozenset[str]:
    """Event types named directly or by their aggregate (``Execution``); ValueError for unknown names."""
    wanted: set[str] = set()
    known = {t for types in EVENT_TYPES.values() for t in types}
    for name in names:
        if name in EVENT_TYPES:
            wanted |= EVENT_TYPES[name]
        elif name in known:
            wanted.add(name)
        else:
            raise ValueError(f"unknown event type {name!r}")
    return frozenset(wanted)


def parse_position(token: str) -> dict[int, int]:
    """``"0:41,1:17"`` -> {0: 41, 1: 17}; empty -> {} (the beginning). ValueError on anything else."""
    vector: dict[int, int] = {}
    token = token.strip()
    if not token:
        return vector
    parts = token.split(",")
    if len(parts) > MAX_PARTITIONS:
        raise ValueError(f"a position names at most {MAX_PARTITIONS} partitions")
    for part in parts:
        partition, colon, offset = part.strip().partition(":")
        if not colon or not partition.isdigit() or not offset.isdigit() or not (partition + offset).isascii():
            raise ValueError(f"not a position: {token[:100]!r} (expected '<partition>:<offset>,...')")
        if int(partition) in vector or int(partition) >= MAX_PARTITIONS or int(offset) > MAX_OFFSET:
            raise ValueError(f"not a position: {token[:100]!r} (repeated or out-of-range partition or offset)")
        vector[int(partition)] = int(offset)
    return vector


def format_position(vector: dict[int, int]) -> str:
    return ",".join(f"{partition}:{offset}" for partition, offset in sorted(vector.items()))


@dataclass(frozen=True)
class StreamFilter:
    types: frozenset[str] | None = None  # None: every type
    aggregate_id: str | None = None

    def matches(self, row: dict[str, Any]) -> bool:
        if self.types is not None and row["event_type"] not in self.types:
            return False
        return self.aggregate_id is None or row["aggregate_id"] == self.aggregate_id


# The owner of the row's aggregate, from its first event (see Visibility above).
_OWNER = (
    "CASE WHEN left(a.event_type, 5) = 'User.' THEN a.aggregate_id::text"
    " ELSE coalesce(f.payload->>'owner', f.payload->>'submitter') END"
)
_SELECT = (
    "SELECT a.seq, a.topic_partition, a.topic_offset, a.event_id, a.aggregate_id::text AS aggregate_id,"
    " a.aggregate_version, a.event_type, a.schema_version, a.command_id, a.correlation_id, a.causation_id,"
    f" a.actor, a.actor_role, a.occurred_at, a.payload::text AS payload, {_OWNER} AS owner"
    " FROM audit_log a LEFT JOIN audit_log f ON f.aggregate_id = a.aggregate_id AND f.aggregate_version = 1"
)


async def read_after(
    conn: AsyncConnection[Any],
    after: dict[int, int],
    stream_filter: StreamFilter,
    owner: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Up to ``limit`` events of each partition in ``after`` past its offset, matching, in offset order.

    ``owner`` (None for admins) keeps only that user's aggregates. A partition that returns fewer
    than ``limit`` rows has nothing more to give as of this read.
    """
    conditions = ["a.topic_partition = c.p", "a.topic_offset > c.after"]
    params: dict[str, Any] = {"parts": list(after), "afters": list(after.values()), "limit": limit}
    if stream_filter.types is not None:
        conditions.append("a.event_type = ANY(%(types)s)")
        params["types"] = sorted(stream_filter.types)
    if stream_filter.aggregate_id is not None:
        conditions.append("a.aggregate_id = %(aggregate)s::uuid")
        params["aggregate"] = stream_filter.aggregate_id
    if owner is not None:
        conditions.append(f"{_OWNER} = %(owner)s")
        params["owner"] = owner
    sql = (
        "SELECT r.* FROM unnest(%(parts)s::int[], %(afters)s::bigint[]) AS c(p, after)"
        f" CROSS JOIN LATERAL ({_SELECT} WHERE {' AND '.join(conditions)}"
        " ORDER BY a.topic_offset LIMIT %(limit)s) r ORDER BY r.seq"
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def read_range(
    conn: AsyncConnection[Any], partition: int, start: int, end: int, limit: int
) -> list[dict[str, Any]]:
    """Events of ``partition`` with ``start <= offset < end`` (at most ``limit``), in offset order."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"{_SELECT} WHERE a.topic_partition = %s AND a.topic_offset >= %s AND a.topic_offset < %s"
            " ORDER BY a.topic_offset LIMIT %s",
            (partition, start, end, limit),
        )
        return await cur.fetchall()


def to_event(row: dict[str, Any]) -> dict[str, Any]:
    """A row as a stream message's event (JSON-ready); ``data`` is the event's own fields."""
    data = orjson.loads(row["payload"])
    for meta in ("timestamp", "originator_topic"):  # occurred_at and event_type say these
        data.pop(meta, None)
    return {
        "seq": row["seq"],
        "partition": row["topic_partition"],
        "offset": row["topic_offset"],
        "event_id": row["event_id"],
        "event_type": row["event_type"],
        "aggregate_type": row["event_type"].partition(".")[0],
        "aggregate_id": row["aggregate_id"],
        "aggregate_version": row["aggregate_version"],
        "schema_version": row["schema_version"],
        "occurred_at": row["occurred_at"].isoformat(),
        "actor": row["actor"],
        "actor_role": row["actor_role"],
        "command_id": row["command_id"],
        "correlation_id": row["correlation_id"],
        "causation_id": row["causation_id"],
        "data": plain(data),
    }
