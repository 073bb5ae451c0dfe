"""A projector maps event types to SQL; the runner calls it inside its transaction.

Batches: the runner hands a projector all the events of a batch at once (``apply_many``). Event
types with a *batch handler* are written with ONE statement per run of such events (``INSERT ...
SELECT FROM unnest(<one array per column>)``, see ``columns``) instead of one statement each: far
less work per row than ``executemany`` (measured: psycopg's pipelined executemany cost ~0.19 ms of
Python per row under load, most of a rebuild's time). To make runs
long, events are grouped by type, keeping each aggregate's events in their order: every row of a
read model belongs to one aggregate, so events of different aggregates commute. (The audit log,
whose global sequence follows the order of writing, takes every event in one run.) The arrays are sent
as binary parameters (``%b::type[]``): psycopg's text array dumper escapes every element with a regex
in Python, 8x the CPU of the binary one (5,000 audit rows: 0.19 s against 0.024 s).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from uuid import UUID

from psycopg import AsyncCursor, postgres
from psycopg.abc import Buffer
from psycopg.adapt import Dumper
from psycopg.pq import Format

from projections.events import EventRecord

Handler = Callable[[AsyncCursor[Any], EventRecord], Awaitable[None]]
BatchHandler = Callable[[AsyncCursor[Any], list[EventRecord]], Awaitable[None]]


class Projector:
    """Subclasses fill ``handlers`` (one method per event type) and/or ``batch_handlers`` (one per run)."""

    name = "projector"
    tables: tuple[str, ...] = ()  # the tables of this read model (a scoped rebuild replaces exactly these)
    # Non-unique indexes of those tables that this projector's own writes look rows up by (e.g. a DELETE by
    # a column that is not the key): a rebuild keeps them while it fills the tables; it builds the others
    # after the fill (infra.runtime.rebuild), far cheaper than maintaining them row by row.
    fill_indexes: tuple[str, ...] = ()
    # Unique constraints of those tables that the fill cannot violate, as the runner applies each aggregate
    # version at most once per schema (``aggregate_versions``), and that no write of the fill looks rows up
    # by: a rebuild drops them while it fills the tables and adds them back after, their indexes built by
    # one sort each instead of row by row. (Others stay: a duplicate there is an event's error, dead-lettered.)
    fill_deferred_constraints: tuple[str, ...] = ()
    # A rebuild's fill (``ProjectionRunner(bulk=True)`` sets it): rows of tables that only grow go in by
    # ``copy_rows``, which PostgreSQL stores in bulk (many rows per heap page write and WAL record; an
    # INSERT ... SELECT FROM unnest writes one of each per row). The live runner keeps its statements.
    bulk = False

    def handlers(self) -> dict[str, Handler]:
        return {}

    def batch_handlers(self) -> dict[str, BatchHandler]:
        return {}

    async def apply(self, cur: AsyncCursor[Any], record: EventRecord) -> None:
        """Apply one event; event types this projector does not know are ignored."""
        await self.apply_many(cur, [record])

    async def apply_many(self, cur: AsyncCursor[Any], records: Sequence[EventRecord]) -> None:
        """Apply events in order (per aggregate); consecutive-able events of a batched type go in one call."""
        await apply_runs(cur, records, self.batch_handlers(), self.handlers())


async def apply_runs(
    cur: AsyncCursor[Any], records: Sequence[EventRecord], batched: dict[str, BatchHandler], single: dict[str, Handler]
) -> None:
    """Apply events in runs (see ``_runs``): a batched type's run in one call, other events one by one.

    Events of types this projector has no handler for are dropped first (one set lookup each): most
    projectors know few of a batch's types, and leaving those out keeps each aggregate's order.
    """
    known = batched.keys() | single.keys()
    for event_type, run in _runs([r for r in records if r.type in known], batched):
        if event_type in batched:
            await batched[event_type](cur, run)
        elif (handler := single.get(event_type)) is not None:
            for record in run:
                await handler(cur, record)


def _runs(records: Sequence[EventRecord], batched: dict[str, BatchHandler]) -> list[tuple[str, list[EventRecord]]]:
    """Group events into runs of one type, in an order that keeps each aggregate's events in sequence.

    An event joins the latest run of its type unless its aggregate already has an event in a later
    run; then it opens a new run. Types without a batch handler are not grouped (their runs are
    applied one event at a time anyway).
    """
    runs: list[tuple[str, list[EventRecord]]] = []
    latest_of_type: dict[str, int] = {}  # event type -> index of its latest run
    latest_of_aggregate: dict[str, int] = {}  # aggregate -> index of the run holding its latest event
    for record in records:
        index = latest_of_type.get(record.type, -1) if record.type in batched else -1
        if index < 0 or index < latest_of_aggregate.get(record.aggregate_id, -1):
            runs.append((record.type, []))
            index = latest_of_type[record.type] = len(runs) - 1
        runs[index][1].append(record)
        latest_of_aggregate[record.aggregate_id] = index
    return runs


def columns(rows: Iterable[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column: the parameters of ``unnest(%b::type[], ...)`` (``width`` columns)."""
    rows = list(rows)
    if not rows:
        return [[] for _ in range(width)]
    if len(rows[0]) != width:
        raise ValueError(f"rows of {len(rows[0])} values, not {width}")
    return [list(column) for column in zip(*rows, strict=True)]  # transposed in C, not value by value


async def copy_rows(
    cur: AsyncCursor[Any], table: str, typed: Sequence[tuple[str, str]], rows: Iterable[Sequence[Any]]
) -> None:
    """``rows`` into ``table`` with one binary COPY; ``typed``: each value's column and PostgreSQL type.

    Values as the INSERTs bind them: a uuid and a jsonb column each take text (the id, the JSON), which
    goes into COPY's binary form as it is (``_UuidText``, ``_JsonbText``; a UUID object per row cost ~12%
    of a rebuild's Python). Not in pipeline mode (COPY has none).
    """
    async with cur.connection.cursor() as copier:  # its own, so the dumpers below serve this COPY alone
        copier.adapters.register_dumper(None, _UuidText)  # None: for COPY's types, not a Python class
        copier.adapters.register_dumper(None, _JsonbText)
        names = ", ".join(name for name, _type in typed)
        async with copier.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT binary)") as copy:
            copy.set_types([type_ for _name, type_ in typed])
            for row in rows:
                await copy.write_row(row)


class _UuidText(Dumper):
    """A uuid column's binary value (its 16 bytes) from the id's text."""

    format = Format.BINARY
    oid = postgres.types["uuid"].oid

    def dump(self, obj: Any) -> Buffer:
        try:
            value = bytes.fromhex(obj.replace("-", ""))
        except ValueError:
            value = b""
        return value if len(value) == 16 else UUID(obj).bytes  # other spellings; ValueError if none


class _JsonbText(Dumper):
    """A jsonb column's binary value from JSON text: its version byte, then the text as it is."""

    format = Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: Any) -> Buffer:
        return b"\x01" + (obj.encode() if isinstance(obj, str) else obj)
