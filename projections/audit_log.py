"""The audit log: every event, with its metadata and hash chain, in one global sequence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from psycopg import AsyncCursor
from psycopg.types.json import Jsonb

from projections.events import EventRecord
from projections.projector import Projector


class AuditLogProjector(Projector):
    name = "audit_log"
    tables = ("audit_log",)

    async def apply_many(self, cur: AsyncCursor[Any], records: Sequence[EventRecord]) -> None:
        """Every event, in order (its global sequence follows the order of writing), in one statement."""
        await cur.executemany(
            "INSERT INTO audit_log (event_id, aggregate_id, aggregate_version, event_type, schema_version,"
            " command_id, correlation_id, causation_id, actor, actor_role, occurred_at, prev_hash, hash,"
            " topic_partition, topic_offset, payload, recorded_at)"
            # clock_timestamp(), not now(): the time of applying, which the lag figures are made of
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s, clock_timestamp())",
            [_row(record) for record in records],
        )


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
        Jsonb(orjson.loads(record.state)),
    )
