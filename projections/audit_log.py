"""The audit log: every event, with its metadata and hash chain, in one global sequence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncCursor

from projections.events import EventRecord
from projections.projector import Projector, columns


class AuditLogProjector(Projector):
    name = "audit_log"
    tables = ("audit_log",)

    async def apply_many(self, cur: AsyncCursor[Any], records: Sequence[EventRecord]) -> None:
        """Every event, in order (its global sequence follows the order of writing), in one statement."""
        await cur.execute(
            "INSERT INTO audit_log (event_id, aggregate_id, aggregate_version, event_type, schema_version,"
            " command_id, correlation_id, causation_id, actor, actor_role, occurred_at, prev_hash, hash,"
            " topic_partition, topic_offset, payload, recorded_at)"
            " SELECT e, a, v, t, s, c, co, ca, ac, r, o, p, h, tp, tof, pl,"
            # clock_timestamp(), not now(): the time of applying, which the lag figures are made of
            " clock_timestamp() FROM unnest(%s::text[], %s::uuid[], %s::int4[], %s::text[], %s::int4[], %s::text[],"
            " %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::text[], %s::int4[],"
            " %s::int8[], %s::jsonb[]) WITH ORDINALITY AS u(e, a, v, t, s, c, co, ca, ac, r, o, p, h, tp, tof, pl, n)"
            " ORDER BY n",
            columns((_row(record) for record in records), 16),
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
        record.state.decode(),  # the stored JSON as it is (it decoded, so it is JSON)
    )
