"""`pipeline audit verify`: re-read the event log, check every hash chain, cross-check the audit log.

The events topic is read from Kafka (``read_committed``) up to the end offsets it has when the
check starts. For each aggregate, event by event:
- its version is the previous one plus 1 (the first is 1, unless reading starts past offset 0);
- its ``prev_hash`` header is the previous event's ``hash``;
- its ``hash`` is ``commands.state_store.chain_hash`` of that, its event type, aggregate id, version
  and stored state: the very function the command processor uses to write it.
The first link that fails is named per aggregate (partition, offset, version, why); the aggregate's
later events are not checked against a chain already broken.

The ``audit_log`` read model is compared with the log over the offsets the projection has already
applied (``projection_positions``): an event without its row (``missing``, unless the projection
dead-lettered it), a row at an offset holding no such event (``extra``), a row that differs from its
event (``different``, naming the columns). Events past the projection's position are counted as not
yet projected, not as missing.

Memory: one (version, hash) per aggregate seen, and one Kafka batch with its rows at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from commands.state_store import chain_hash
from infra.adapters.kafka import Topics, topic_partitions
from infra.adapters.postgres import connection_kwargs
from infra.runtime.bootstrap import require_services
from infra.runtime.settings import Settings
from projections.audit_log import rows_at_offsets, rows_outside

MAX_LISTED = 1000  # read-model mismatches listed one by one; all are counted
BATCH_RECORDS = 5000

# done offsets, total offsets, events checked, seconds since the start
Progress = Callable[[int, int, int, float], None]


@dataclass(frozen=True)
class VerifyOptions:
    aggregate_id: str | None = None  # only this aggregate's events
    from_offset: int = 0  # in every partition; chains then start at the first event seen
    check_read_model: bool = True


@dataclass(frozen=True)
class BrokenLink:
    aggregate_id: str
    partition: int
    offset: int
    version: int | None
    reason: str


@dataclass(frozen=True)
class Mismatch:
    kind: str  # missing | extra | different
    partition: int
    offset: int
    aggregate_id: str | None
    version: int | None
    detail: str = ""


@dataclass
class VerifyReport:
    events: int = 0
    aggregates: int = 0
    seconds: float = 0.0
    broken: list[BrokenLink] = field(default_factory=list)  # the first broken link of each aggregate
    mismatches: list[Mismatch] = field(default_factory=list)  # the first MAX_LISTED
    counts: dict[str, int] = field(default_factory=lambda: {"missing": 0, "extra": 0, "different": 0})
    not_projected: int = 0
    dead_lettered: int = 0

    @property
    def intact(self) -> bool:
        return not self.broken and not any(self.counts.values())

    @property
    def events_per_s(self) -> float:
        return round(self.events / self.seconds, 1) if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """The machine-readable summary (what `--json` prints)."""
        return {
            "intact": self.intact,
            "events": self.events,
            "aggregates": self.aggregates,
            "seconds": round(self.seconds, 3),
            "events_per_s": self.events_per_s,
            "broken": len(self.broken),
            "read_model": {**self.counts, "not_projected": self.not_projected, "dead_lettered": self.dead_lettered},
            "broken_links": [asdict(link) for link in self.broken],
            "mismatches": [asdict(m) for m in self.mismatches],
        }

    def mismatch(self, item: Mismatch) -> None:
        self.counts[item.kind] += 1
        if len(self.mismatches) < MAX_LISTED:
            self.mismatches.append(item)


class _Chains:
    """The tip (version, hash) of every aggregate seen, and the aggregates already found broken."""

    def __init__(self, report: VerifyReport, from_start: bool) -> None:
        self.report = report
        self.from_start = from_start
        self.tips: dict[str, tuple[int, str]] = {}
        self.broken: set[str] = set()

    def check(self, record: Any, headers: dict[str, str]) -> None:
        aggregate_id = headers["aggregate_id"]
        version = int(headers["aggregate_version"])
        prev_hash, claimed = headers["prev_hash"], headers["hash"]
        if aggregate_id in self.broken:
            return
        tip = self.tips.get(aggregate_id)
        reason = None
        if tip is None and self.from_start and version != 1:
            reason = f"the first event has version {version}, not 1"
        elif tip is None and self.from_start and prev_hash != "":
            reason = "the first event has a prev_hash"
        elif tip is not None and version != tip[0] + 1:
            reason = f"version {version} follows version {tip[0]}"
        elif tip is not None and prev_hash != tip[1]:
            reason = f"prev_hash is not the hash of version {tip[0]}"
        elif chain_hash(prev_hash, headers["event_type"], aggregate_id, version, record.value or b"") != claimed:
            reason = "hash does not match the event's content and prev_hash"
        if reason is not None:
            self.broken.add(aggregate_id)
            self.report.broken.append(BrokenLink(aggregate_id, record.partition, record.offset, version, reason))
        self.tips[aggregate_id] = (version, claimed)


_CHAIN_HEADERS = frozenset({"aggregate_id", "aggregate_version", "event_type", "prev_hash", "hash"})


def _headers(record: Any) -> dict[str, str] | None:
    """The headers the chain check needs (decoding only those: most of the time is spent per record)."""
    try:
        headers = {key: value.decode() for key, value in record.headers if key in _CHAIN_HEADERS}
        int(headers["aggregate_version"])
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    return headers if len(headers) == len(_CHAIN_HEADERS) else None  # else not an event of ours


def _differences(row: dict[str, Any], record: Any) -> list[str]:
    """The columns in which an audit row differs from its event in the log."""
    headers = {key: value.decode(errors="replace") for key, value in record.headers}
    logged = {
        "event_id": headers.get("event_id"),
        "aggregate_id": headers["aggregate_id"],
        "aggregate_version": int(headers["aggregate_version"]),
        "event_type": headers["event_type"].rsplit(":", 1)[-1],
        "command_id": headers.get("command_id"),
        "correlation_id": headers.get("correlation_id"),
        "causation_id": headers.get("causation_id"),
        "actor": headers.get("actor"),
        "actor_role": headers.get("actor_role"),
        "prev_hash": headers["prev_hash"],
        "hash": headers["hash"],
    }
    changed = [name for name, value in logged.items() if row[name] != value]
    try:
        if row["occurred_at"] != datetime.fromisoformat(headers.get("timestamp", "")):
            changed.append("occurred_at")
    except ValueError:
        changed.append("occurred_at")
    try:
        if orjson.loads(row["payload"]) != orjson.loads(record.value or b""):
            changed.append("payload")
    except orjson.JSONDecodeError:
        changed.append("payload")
    return changed


async def verify(settings: Settings, options: VerifyOptions, progress: Progress | None = None) -> VerifyReport:
    """Check the log's hash chains (and the audit log against it); see the module docstring."""
    require_services(settings)
    topic = Topics.from_settings(settings.kafka).events
    partitions = await topic_partitions(settings.kafka.bootstrap_servers, topic)
    tps = [TopicPartition(topic, p) for p in partitions]
    report = VerifyReport()
    chains = _Chains(report, from_start=options.from_offset == 0)
    started = time.monotonic()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        isolation_level="read_committed",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    conn: psycopg.AsyncConnection[Any] | None = None
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
        starts = {p: min(options.from_offset, end) for p, end in ends.items()}
        projected: dict[int, int] = {}
        dead: set[tuple[int, int]] = set()
        if options.check_read_model:
            kwargs: Any = {**connection_kwargs(settings.database.schema), "autocommit": True}
            conn = await psycopg.AsyncConnection.connect(settings.database.url, **kwargs)
            projected, dead = await _projection_state(conn, settings, topic)
            outside = await rows_outside(conn, partitions, options.aggregate_id)
            for _ in range(outside):
                report.mismatch(Mismatch("extra", -1, -1, None, None, "a row names a partition the log lacks"))
        total = sum(ends[p] - starts[p] for p in partitions)
        for tp in tps:
            consumer.seek(tp, starts[tp.partition])
        checked = dict(starts)  # partition -> offsets below it are done
        pending = {tp for tp in tps if starts[tp.partition] < ends[tp.partition]}
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=1000, max_records=BATCH_RECORDS)
            for tp, records in batches.items():
                end = ends[tp.partition]
                records = [r for r in records if r.offset < end]
                if records:
                    await _check_batch(report, chains, options, conn, tp.partition, records, checked, projected, dead)
            for tp in list(pending):
                position = await consumer.position(tp)
                if position >= ends[tp.partition]:
                    await _compare_rows(report, options, conn, tp.partition, checked, ends[tp.partition], [], projected)
                    pending.discard(tp)
                    checked[tp.partition] = ends[tp.partition]
            if progress is not None:
                done = sum(checked[p] - starts[p] for p in partitions)
                progress(done, total, report.events, time.monotonic() - started)
        report.aggregates = len(chains.tips)
        report.seconds = time.monotonic() - started
        if progress is not None:
            progress(total, total, report.events, report.seconds)
        return report
    finally:
        await consumer.stop()
        if conn is not None:
            await conn.close()


async def _projection_state(
    conn: psycopg.AsyncConnection[Any], settings: Settings, topic: str
) -> tuple[dict[int, int], set[tuple[int, int]]]:
    """The live projection's positions (offsets below are applied) and the offsets it dead-lettered."""
    cur = await conn.execute(
        "SELECT partition, next_offset FROM projection_positions WHERE projection = %s AND topic = %s",
        (settings.kafka.projection_name, topic),
    )
    positions = {int(p): int(o) for p, o in await cur.fetchall()}
    cur = await conn.execute("SELECT topic_partition, topic_offset FROM projection_dead_letters")
    return positions, {(int(p), int(o)) for p, o in await cur.fetchall()}


async def _check_batch(
    report: VerifyReport,
    chains: _Chains,
    options: VerifyOptions,
    conn: psycopg.AsyncConnection[Any] | None,
    partition: int,
    records: list[Any],
    checked: dict[int, int],
    projected: dict[int, int],
    dead: set[tuple[int, int]],
) -> None:
    ours: list[tuple[Any, dict[str, str]]] = []
    for record in records:
        headers = _headers(record)
        if headers is None:
            key = (record.key or b"").decode(errors="replace")
            if options.aggregate_id is None or key == options.aggregate_id:
                report.events += 1
                report.broken.append(BrokenLink(key, partition, record.offset, None, "not an event: headers missing"))
            continue
        if options.aggregate_id is not None and headers["aggregate_id"] != options.aggregate_id:
            continue
        report.events += 1
        chains.check(record, headers)
        ours.append((record, headers))
    if conn is not None:
        await _compare_rows(report, options, conn, partition, checked, records[-1].offset + 1, ours, projected, dead)
    checked[partition] = records[-1].offset + 1


async def _compare_rows(
    report: VerifyReport,
    options: VerifyOptions,
    conn: psycopg.AsyncConnection[Any] | None,
    partition: int,
    checked: dict[int, int],
    end: int,
    events: list[tuple[Any, dict[str, str]]],
    projected: dict[int, int],
    dead: set[tuple[int, int]] | None = None,
) -> None:
    """Compare the audit rows at offsets [checked, end) of a partition with ``events`` read there."""
    if conn is None:
        return
    applied_end = min(end, projected.get(partition, 0))
    start = checked[partition]
    rows = {}
    if start < applied_end:
        rows = await rows_at_offsets(conn, partition, start, applied_end, options.aggregate_id)
    for record, headers in events:
        if record.offset >= applied_end:
            report.not_projected += 1
            continue
        version = int(headers["aggregate_version"])
        row = rows.pop(record.offset, None)
        if row is None:
            if dead is not None and (partition, record.offset) in dead:
                report.dead_lettered += 1
            else:
                report.mismatch(Mismatch("missing", partition, record.offset, headers["aggregate_id"], version))
            continue
        changed = _differences(row, record)
        if changed:
            detail = "differs in " + ", ".join(changed)
            report.mismatch(Mismatch("different", partition, record.offset, headers["aggregate_id"], version, detail))
    for offset, row in rows.items():  # rows at offsets that hold no such event in the log
        version = row["aggregate_version"]
        report.mismatch(Mismatch("extra", partition, offset, row["aggregate_id"], version, "no such event in the log"))
