"""Per-partition aggregate state for the command processor: an LRU over an on-disk table.

The source of truth is the compacted state topic, written in the same Kafka transaction as the
events. A local SQLite file per partition holds its materialized copy so memory stays bounded
(only the LRU is in RAM) and a restart does not re-read the whole topic: it is written only
after the transaction commits, with the state-topic offset it has reached, so it can lag the
topic (caught up on start) but never runs ahead of it.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.domain import Aggregate, Snapshot
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic

SNAPSHOT_TOPIC = get_topic(Snapshot)
# The state topic's record of the next command offset of its partition, written in each batch's
# transaction beside the states: the consume-transform-produce position, where a transaction's
# consumed offsets would otherwise go (AddOffsetsToTxn + TxnOffsetCommit: two more round trips and
# a fourth partition per transaction). Aggregate ids are UUIDs, so it cannot collide with one.
COMMANDS_POSITION_KEY = b"~commands-position"


def encode_command_offset(offset: int) -> bytes:
    return str(offset).encode()


@dataclass
class AggregateState:
    """One aggregate as the processor knows it: its state, the tip of its hash chain, recent commands."""

    aggregate: Aggregate | None
    last_hash: str = ""
    # command_id -> (encoded outcome, request fingerprint), oldest first, bounded per aggregate
    commands: OrderedDict[str, tuple[bytes, str]] = field(default_factory=OrderedDict)

    def encode(self, mapper: Mapper[UUID]) -> bytes:
        """The state-topic value: snapshot, hash tip and remembered command outcomes."""
        snapshot = None
        if self.aggregate is not None:
            snapshot = orjson.Fragment(mapper.to_stored_event(Snapshot.take(self.aggregate)).state)
        return orjson.dumps(
            {
                "h": self.last_hash,
                "v": self.aggregate.version if self.aggregate is not None else 0,
                "s": snapshot,
                "c": {cid: {"o": orjson.Fragment(o), "f": f} for cid, (o, f) in self.commands.items()},
            }
        )

    @classmethod
    def decode(cls, aggregate_id: str, value: bytes, mapper: Mapper[UUID]) -> AggregateState:
        raw: dict[str, Any] = orjson.loads(value)
        aggregate = None
        if raw["s"] is not None:
            stored = StoredEvent(
                originator_id=UUID(aggregate_id),
                originator_version=raw["v"],
                topic=SNAPSHOT_TOPIC,
                state=orjson.dumps(raw["s"]),
            )
            snapshot = mapper.to_domain_event(stored)
            aggregate = snapshot.mutate(None)  # type: ignore[attr-defined]
        commands = OrderedDict((cid, (orjson.dumps(c["o"]), c["f"])) for cid, c in raw["c"].items())
        return cls(aggregate=aggregate, last_hash=raw["h"], commands=commands)


def chain_hash(previous: str, event_type: str, aggregate_id: str, version: int, state: bytes) -> str:
    """Tamper-evident link: each event's hash covers the previous one of the same aggregate."""
    digest = hashlib.sha256()
    for part in (previous, event_type, aggregate_id, str(version)):
        digest.update(part.encode())
        digest.update(b"\x00")
    digest.update(state)
    return digest.hexdigest()


class PartitionStore:
    """State of one partition's aggregates: LRU of decoded states over a SQLite table of encoded ones."""

    def __init__(self, path: Path, mapper: Mapper[UUID], cache_size: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS state (aggregate_id TEXT PRIMARY KEY, value BLOB NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._mapper = mapper
        self._cache: OrderedDict[str, AggregateState] = OrderedDict()
        self._cache_size = cache_size
        row = self._db.execute("SELECT value FROM meta WHERE key = 'command_offset'").fetchone()
        self._command_offset: int | None = int(row[0]) if row else None

    @property
    def next_state_offset(self) -> int:
        """The state-topic offset this store has applied up to (exclusive)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'next_offset'").fetchone()
        return int(row[0]) if row else 0

    @property
    def command_offset(self) -> int | None:
        """The next command offset of the last committed batch this store has seen; None: none recorded."""
        return self._command_offset

    def get(self, aggregate_id: str) -> AggregateState:
        """The aggregate's state, or an empty state if it has never been created."""
        cached = self._cache.get(aggregate_id)
        if cached is not None:
            self._cache.move_to_end(aggregate_id)
            return cached
        row = self._db.execute("SELECT value FROM state WHERE aggregate_id = ?", (aggregate_id,)).fetchone()
        state = AggregateState.decode(aggregate_id, row[0], self._mapper) if row else AggregateState(None)
        self._remember(aggregate_id, state)
        return state

    def forget(self, aggregate_ids: Iterable[str]) -> None:
        """Drop cached states (after an aborted transaction changed them in memory only)."""
        for aggregate_id in aggregate_ids:
            self._cache.pop(aggregate_id, None)

    def commit(
        self, values: dict[str, bytes], states: dict[str, AggregateState], next_offset: int, command_offset: int
    ) -> None:
        """Record states that the state topic now holds committed, up to ``next_offset``, with the
        batch's position ``command_offset``."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO state (aggregate_id, value) VALUES (?, ?) "
                "ON CONFLICT (aggregate_id) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )
            self._advance_command_offset(command_offset)
            self._set_meta("next_offset", next_offset)
        for aggregate_id, state in states.items():
            self._remember(aggregate_id, state)

    def restore(self, records: Iterable[tuple[bytes, bytes]], next_offset: int) -> None:
        """Apply state-topic records (key, value) read while catching up."""
        states = []
        command_offset = None
        for key, value in records:
            if key == COMMANDS_POSITION_KEY:
                command_offset = int(value)
            else:
                states.append((key.decode(), value))
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO state (aggregate_id, value) VALUES (?, ?) "
                "ON CONFLICT (aggregate_id) DO UPDATE SET value = excluded.value",
                states,
            )
            if command_offset is not None:
                self._advance_command_offset(command_offset)
            self._set_meta("next_offset", next_offset)
        self._cache.clear()

    def close(self) -> None:
        self._db.close()

    def _advance_command_offset(self, offset: int) -> None:
        """Record the position (in the open SQLite transaction) and keep its copy in memory, never moving back."""
        self._set_meta("command_offset", offset)
        self._command_offset = max(offset, self._command_offset or 0)

    def _set_meta(self, key: str, offset: int) -> None:
        """Offsets only move forward: a late write of an older one (a restore overlapping) keeps the newer."""
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = max(meta.value, excluded.value)",
            (key, offset),
        )

    def _remember(self, aggregate_id: str, state: AggregateState) -> None:
        self._cache[aggregate_id] = state
        self._cache.move_to_end(aggregate_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
