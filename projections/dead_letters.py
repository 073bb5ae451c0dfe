"""The projections' dead letters (``projection_dead_letters``): list them, retry one, skip one.

The runner records an event there when it cannot apply it (projections.runner, "Dead letters") and
moves on. Operators then decide (`pipeline dlq`):
- **retry** re-applies the stored event through the same projectors, in one transaction that first
  takes the partition's position row lock (the live runner takes it too, so the two never interleave),
  then marks the letter resolved. Version gating holds: the event is applied only if it is still its
  aggregate's next event, i.e. the aggregate's applied version is the event's (it counted as applied
  when dead-lettered) or the one before (a version gap since filled). If a later event of the
  aggregate has been applied since, applying this one now would reorder the aggregate's history: the
  retry is refused, and the way out is a rebuild after the fix, or a skip. A retry that fails again
  changes nothing and says why.
- **skip** marks the letter resolved without applying the event (the read model stays without it).
Resolved letters stay as a record (``resolved_at``, ``resolution``); /health counts unresolved ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from projections.events import EventRecord
from projections.projector import Projector

MAX_NOTE_CHARS = 500


class RetryRefused(Exception):
    """The dead letter cannot be retried now; the message says why and what to do."""


async def list_dead_letters(
    conn: AsyncConnection[Any], *, include_resolved: bool = False, limit: int = 100
) -> list[dict[str, Any]]:
    """Dead letters, oldest first (unresolved ones only unless ``include_resolved``)."""
    where = "" if include_resolved else " WHERE resolved_at IS NULL"
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT id, topic_partition, topic_offset, reason, recorded_at, resolved_at, resolution"
            f" FROM projection_dead_letters{where} ORDER BY id LIMIT %s",
            (limit,),
        )
        return await cur.fetchall()


async def unresolved_count(conn: AsyncConnection[Any]) -> int:
    cur = await conn.execute("SELECT count(*) FROM projection_dead_letters WHERE resolved_at IS NULL")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def dead_letter(conn: AsyncConnection[Any], letter_id: int) -> dict[str, Any] | None:
    """One unresolved letter, or None."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT id, topic_partition, topic_offset, reason FROM projection_dead_letters"
            " WHERE id = %s AND resolved_at IS NULL",
            (letter_id,),
        )
        return await cur.fetchone()


async def skip(conn: AsyncConnection[Any], letter_id: int, note: str = "") -> bool:
    """Mark an unresolved letter skipped; False if there is none with that id."""
    resolution = ("skipped: " + note if note else "skipped")[:MAX_NOTE_CHARS].replace("\x00", " ")
    cur = await conn.execute(
        "UPDATE projection_dead_letters SET resolved_at = now(), resolution = %s WHERE id = %s AND resolved_at IS NULL",
        (resolution, letter_id),
    )
    return cur.rowcount == 1


async def retry(
    conn: AsyncConnection[Any],
    letter_id: int,
    event: EventRecord,
    projectors: Sequence[Projector],
    position: tuple[str, str],
) -> None:
    """Apply a dead-lettered ``event`` (decoded from its record) and resolve its letter, in one transaction.

    ``position`` is (projection, topic) of the positions row to lock. RetryRefused when gating forbids
    it, the letter is gone, or a projector still fails (nothing is changed then).
    """
    async with conn.transaction():
        await conn.execute(
            "SELECT next_offset FROM projection_positions WHERE projection = %s AND topic = %s AND partition = %s"
            " FOR UPDATE",
            (*position, event.partition),
        )
        cur = await conn.execute(
            "SELECT topic_partition, topic_offset FROM projection_dead_letters WHERE id = %s AND resolved_at IS NULL"
            " FOR UPDATE",
            (letter_id,),
        )
        if await cur.fetchone() is None:
            raise RetryRefused(f"no unresolved dead letter {letter_id} (resolved meanwhile?)")
        cur = await conn.execute(
            "SELECT version FROM aggregate_versions WHERE aggregate_id = %s", (event.aggregate_id,)
        )
        row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if event.version < current:
            raise RetryRefused(
                f"aggregate {event.aggregate_id} has moved on to version {current} since its version {event.version}"
                " was dead-lettered: applying it now would reorder its events. Rebuild the read models after the"
                " fix (`pipeline projections rebuild --swap`), or skip it."
            )
        if event.version > current + 1:
            raise RetryRefused(f"still a version gap: aggregate {event.aggregate_id} is at {current}")
        try:
            async with conn.transaction(), conn.cursor() as cursor:
                for projector in projectors:
                    await projector.apply(cursor, event)
        except Exception as exc:
            raise RetryRefused(f"{event.type} still not applied: {type(exc).__name__}: {exc}") from exc
        await conn.execute(
            "INSERT INTO aggregate_versions (aggregate_id, version) VALUES (%s, %s)"
            " ON CONFLICT (aggregate_id)"
            " DO UPDATE SET version = greatest(aggregate_versions.version, excluded.version)",
            (event.aggregate_id, event.version),
        )
        await conn.execute(
            "UPDATE projection_dead_letters SET resolved_at = now(), resolution = 'retried: applied' WHERE id = %s",
            (letter_id,),
        )
