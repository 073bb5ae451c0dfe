"""The command processor: the single writer of each partition's aggregates.

It is a consumer group on the commands topic. For each batch of one partition it runs the
commands against their aggregates and, in ONE Kafka transaction, produces the new events (same
key, same partition number), each aggregate's new state to the compacted state topic, the
outcomes the API waits for, and the position after the consumed commands (consume-transform-
produce; the position is a state-topic record, read back on assignment, rather than the group's
transactional offsets, which cost two more round trips and a fourth partition per transaction).
Each partition has its own transactional id, so a new owner fences a zombie one. Nothing in RAM
is needed to restart: states and the position come back from the state topic (see ``state_store``).
A transaction is three round trips: its partitions added, every record produced in one request
(the outcomes name their events' offsets, predicted: ``_EventOffsets``), the commit.

No record blocks a partition. A command that cannot be decoded goes to the dead-letter topic; one
whose payload breaks ``commands.limits``, cannot be fingerprinted or encoded, or whose events,
outcome or state would exceed ``MAX_RECORD_BYTES`` becomes a rejected outcome (``invalid`` or
``too_large``: the API answers 4xx at once) plus a dead letter carrying the error, in the same
transaction as everything else. Sizes are checked before sending, because a failed produce poisons
the transaction; a record found too large only at the end of a batch (an aggregate's state) is
remembered, the batch aborted and run again with that command rejected. A batch that fails for
any other reason (the broker) is retried from its first command after a backoff that doubles up
to ``RETRY_BACKOFF_MAX_S`` and is logged once per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import aiokafka.producer.sender as aiokafka_sender
import msgspec
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError, ProducerFenced
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Mapper
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer

from commands.consumers import group_consumer
from commands.envelope import ENVELOPE_DECODER, CommandEnvelope, Outcome, Position, Rejection, encode
from commands.limits import MAX_STORABLE_DEPTH, InvalidInput, check_json
from commands.rebalance import Rebalance
from commands.registry import execute
from commands.state_store import (
    COMMANDS_POSITION_KEY,
    AggregateState,
    PartitionStore,
    chain_hash,
    encode_command_offset,
)
from commands.tracing import header_value, parent_context, trace_headers
from domain.errors import DomainError

log = logging.getLogger("pipeline.processor")

# Right after a commit the broker is still writing the transaction markers and answers the next
# transaction's AddPartitionsToTxn with CONCURRENT_TRANSACTIONS (KAFKA-5477). aiokafka then waits a
# fixed 20 ms, which caps a partition at ~40 transactions/s and was most of the write latency
# (measured: 24 ms per transaction, 5.7 ms with a 2 ms retry). The markers take a few ms, so retry
# sooner; aiokafka has no setting for it, hence the module attribute.
TRANSACTION_RETRY_BACKOFF_S = 0.002
aiokafka_sender.BACKOFF_OVERRIDE = TRANSACTION_RETRY_BACKOFF_S
# A producer stopped after a broker error may wait on a transaction that can never end.
PRODUCER_STOP_TIMEOUT_S = 10.0

# The largest record (key + value + headers) the processor produces. Kafka's default
# max.message.bytes (1,048,588, which the project keeps) and aiokafka's max_request_size
# (1,048,576) leave ~48 KB for batch framing above this.
MAX_RECORD_BYTES = 1_000_000
# A batch that failed as a whole (not because of one command) is retried after this backoff,
# doubled per consecutive failure: a broker outage costs one log line per step, not a busy loop.
RETRY_BACKOFF_S = 0.1
RETRY_BACKOFF_MAX_S = 30.0
MAX_ERROR_CHARS = 2000  # of an error kept in a rejection or a dead letter
MAX_ID_CHARS = 256  # command ids, types, actors: the API's are UUIDs and words
# The position that counts is in the state topic; the consumer group's copy (for tools showing lag) is
# committed at most this often per partition.
GROUP_OFFSETS_EVERY_S = 5.0


@dataclass(frozen=True)
class ProcessorConfig:
    bootstrap_servers: str
    commands_topic: str
    events_topic: str
    outcomes_topic: str
    state_topic: str
    dead_letter_topic: str
    group_id: str
    transactional_id_prefix: str
    state_dir: Path
    batch_size: int = 500
    cache_size: int = 10_000
    commands_per_aggregate: int = 64
    transaction_timeout_ms: int = 60_000
    linger_ms: float = 5.0  # group commit: gather commands this long before a transaction
    linger_min_records: int = 2  # ... once a poll brings this many: a lone command is not held back


@dataclass
class _Step:
    """One command of a batch on its way through the transaction."""

    envelope: CommandEnvelope
    fingerprint: str
    state: AggregateState | None = None
    event_types: list[str] = field(default_factory=list)
    event_futures: list[asyncio.Future[Any]] = field(default_factory=list)
    # Where its events will land, when known before the broker answers (see _EventOffsets); None: not known.
    predicted_offsets: list[int | None] = field(default_factory=list)
    version: int = 0
    created_at: float = 0.0
    rejection: Rejection | None = None
    duplicate_of: bytes | None = None  # the remembered outcome of the same command id
    same_batch_original: _Step | None = None
    offset: int = -1  # of the command record
    unprocessable: bool = False  # rejected because it cannot be processed: dead-lettered too
    span: Span | None = None  # "process <type>" when tracing is on; ends when the transaction does


@dataclass
class _EventOffsets:
    """The offsets a batch's events will get in its events partition, when known before the broker says.

    The processor is the partition's only writer, and a committed transaction leaves one commit
    marker after its records, so once one transaction's offsets are known the next one's follow:
    its first event lands two past the previous one's last (one past, for a transaction without
    events). Knowing them, the outcomes (which name their events' offsets: the consistency token)
    go out in the same produce request as the events instead of a round trip later. The broker's
    answer is still checked before the commit; a wrong guess (an aborted transaction or another
    writer came between) aborts the batch, which runs again waiting for the answers.
    """

    next: int | None  # the offset of the next event sent; None: unknown

    def take(self) -> int | None:
        if self.next is None:
            return None
        offset, self.next = self.next, self.next + 1
        return offset

    def after_commit(self, last_event: int | None) -> int | None:
        """Where the next transaction's first event lands once this one committed: past this one's last event
        (the broker's answer; without events, where its first would have landed) and its commit marker."""
        end = last_event + 1 if last_event is not None else self.next
        return None if end is None else end + 1


class _Misprediction(Exception):
    """An event landed elsewhere than predicted: abort the batch and run it again without predicting."""


class _TooLarge(Exception):
    """A record this command would produce exceeds MAX_RECORD_BYTES."""


class _RecordFault(Exception):
    """One command's result cannot be produced; abort the batch and run it again with it rejected."""

    def __init__(self, offset: int, rejection: Rejection) -> None:
        super().__init__(rejection.message)
        self.offset = offset
        self.rejection = rejection


def _record_size(key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] = ()) -> int:
    return len(key or b"") + len(value) + sum(len(k) + len(v) for k, v in headers)


def _check_ids(envelope: CommandEnvelope) -> None:
    """ValueError for ids no API sends (too long to answer with an outcome, or with NUL)."""
    actor = envelope.actor
    ids = (envelope.command_id, envelope.type, envelope.correlation_id, envelope.request_id, actor.user_id, actor.role)
    if any(len(text) > MAX_ID_CHARS or "\x00" in text for text in ids):
        raise ValueError("an id of the envelope is too long or contains NUL")


def _unprocessable(code: str, message: str) -> Rejection:
    return Rejection(code, message[:MAX_ERROR_CHARS])


def fingerprint(envelope: CommandEnvelope) -> str:
    """What makes two submissions with one command id the same request."""
    body = orjson.dumps([envelope.type, envelope.aggregate_id, envelope.payload], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()[:32]


class CommandProcessor:
    """Consumes commands, writes events + state + outcomes + offsets in one transaction per batch."""

    def __init__(
        self,
        config: ProcessorConfig,
        mapper: Mapper[UUID],
        run_command: Callable[[CommandEnvelope, Aggregate | None], Aggregate] = execute,
        tracer: Tracer | None = None,
    ) -> None:
        self.config = config
        self.tracer = tracer  # None: tracing off, no span and no header (infra.runtime.tracing)
        self.mapper = mapper
        self.run_command = run_command
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._stores: dict[int, PartitionStore] = {}
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._epoch = 0  # bumped on every assignment change: a linger stops at one
        # Wall-clock times for the watchdog (infra.runtime.heartbeat): the loop turned / a batch was processed.
        self.last_loop = 0.0
        self.last_progress = 0.0
        # Dead letters committed since this process started (the heartbeat reports them to /health);
        # a batch's are counted once its transaction commits, since an aborted batch runs again.
        self.dead_letters = 0
        self._batch_dead_letters: dict[int, int] = {}
        # Batch sizes and transaction times for the metrics (infra.runtime.heartbeat writes them out).
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        # partition -> command offset -> the rejection it gets when the batch runs again
        self._faults: dict[int, dict[int, Rejection]] = {}
        self.failures: dict[int, int] = {}  # partition -> consecutive failed batches
        # partition -> the offset its next event will get, known after a committed batch with events
        self._next_event_offset: dict[int, int] = {}
        self._group_offsets_at: dict[int, float] = {}  # partition -> when its group offset was last copied
        self._background: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Process commands until ``stop`` is set."""
        consumer = group_consumer(
            self.config.bootstrap_servers,
            self.config.group_id,
            self.config.commands_topic,
            Rebalance(self.assign, self.revoke),
            max_poll_records=self.config.batch_size,
        )
        self._consumer = consumer
        await consumer.start()
        try:
            while not stop.is_set():
                self.last_loop = time.time()
                batches = await self._gather(consumer)
                async with self._lock:
                    # Partitions are independent (own producer, own transaction, own state): a
                    # transaction costs several broker round trips, so they run side by side.
                    await asyncio.gather(
                        *(
                            self._process_partition(consumer, tp, records)
                            for tp, records in batches.items()
                            if tp.partition in self._producers
                        )
                    )
        finally:
            for task in list(self._background):
                task.cancel()
            await consumer.stop()
            async with self._lock:
                for partition in list(self._producers):
                    await self._release(partition)

    async def _gather(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Any]]:
        """Group commit: once commands arrive, keep collecting for ``linger_ms`` (or a full batch).

        A transaction costs the same few broker round trips (and marker writes) whatever it holds,
        so fewer, larger ones are what makes the write path cheap (measured by
        ../shared/probes/kafka_txn_cost.py: 1.27 ms of broker time per record at 4 records per
        transaction, 0.065 ms at 64). Like PostgreSQL's commit_delay with commit_siblings, the wait
        is only worth it when commands arrive together: a poll that brings fewer than
        ``linger_min_records`` is processed at once, so a lone writer pays no linger.
        """
        batches = await consumer.getmany(timeout_ms=200, max_records=self.config.batch_size)
        count = sum(len(records) for records in batches.values())
        if self.config.linger_ms <= 0 or count < max(1, self.config.linger_min_records):
            return batches
        deadline = asyncio.get_running_loop().time() + self.config.linger_ms / 1000
        epoch = self._epoch
        while count < self.config.batch_size and epoch == self._epoch:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            more = await consumer.getmany(
                timeout_ms=max(1, int(remaining * 1000)), max_records=self.config.batch_size - count
            )
            for tp, records in more.items():
                batches.setdefault(tp, []).extend(records)
                count += len(records)
        return batches

    @property
    def consumer(self) -> AIOKafkaConsumer | None:
        """The group consumer while running (the heartbeat reads its lag)."""
        return self._consumer

    async def assign(self, partitions: set[TopicPartition]) -> None:
        """Take ownership: fence the previous owner, then catch the local state up to the state topic."""
        self._epoch += 1
        async with self._lock:
            for tp in partitions:
                if tp.partition in self._producers:
                    continue
                producer = await self._start_producer(tp.partition)
                store = PartitionStore(
                    self.config.state_dir / f"{self.config.transactional_id_prefix}-p{tp.partition}.sqlite",
                    self.mapper,
                    self.config.cache_size,
                )
                await self._restore(store, tp.partition)
                self._producers[tp.partition] = producer
                self._stores[tp.partition] = store
                self._seek_to_stored(tp, store)
                log.info("owns partition %s from command offset %s", tp.partition, store.command_offset)

    async def _start_producer(self, partition: int) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.config.bootstrap_servers,
            transactional_id=f"{self.config.transactional_id_prefix}-{partition}",
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
            transaction_timeout_ms=self.config.transaction_timeout_ms,
        )
        await producer.start()  # init_transactions: aborts whatever a zombie left open
        return producer

    async def _renew_producer(self, partition: int) -> None:
        """Replace a partition's producer after a failed batch (e.g. the broker restarted).

        aiokafka leaves a transactional producer in a fatal state after some of them (an unknown
        producer id, an out-of-order sequence, a fenced epoch after the coordinator moved), and then
        refuses every later transaction; a new one with the same transactional id starts clean and
        aborts whatever the old one left open. If even that fails the error ends the worker, and the
        supervisor starts a new one.
        """
        old = self._producers.get(partition)
        if old is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.stop(), PRODUCER_STOP_TIMEOUT_S)
        log.warning("partition %s: replacing its transactional producer after a failed batch", partition)
        self._producers[partition] = await self._start_producer(partition)

    async def revoke(self, partitions: set[TopicPartition]) -> None:
        """Give ownership up between batches, never in the middle of one."""
        self._epoch += 1
        async with self._lock:
            for tp in partitions:
                await self._release(tp.partition)

    def _seek_to_stored(self, tp: TopicPartition, store: PartitionStore) -> None:
        """Continue from the command offset the last committed transaction recorded in the state topic.

        Without one (a state topic written before it held the position) the group's committed
        offset applies, as the consumer finds it by itself.
        """
        offset = store.command_offset
        if offset is not None and self._consumer is not None and tp in self._consumer.assignment():
            self._consumer.seek(tp, offset)

    async def _release(self, partition: int) -> None:
        self._next_event_offset.pop(partition, None)
        self._faults.pop(partition, None)
        self.failures.pop(partition, None)
        producer = self._producers.pop(partition, None)
        if producer is not None:
            await producer.stop()
        store = self._stores.pop(partition, None)
        if store is not None:
            store.close()

    async def _restore(self, store: PartitionStore, partition: int) -> None:
        tp = TopicPartition(self.config.state_topic, partition)
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await reader.start()
        try:
            reader.assign([tp])
            end = (await reader.end_offsets([tp]))[tp]
            position = store.next_state_offset
            if position >= end:
                return
            reader.seek(tp, position)
            restored = 0
            while position < end:
                batch = (await reader.getmany(tp, timeout_ms=1000, max_records=5000)).get(tp, [])
                records = [(r.key, r.value) for r in batch if r.key is not None and r.value is not None]
                position = await reader.position(tp)
                store.restore(records, position)
                restored += len(records)
                self.last_progress = time.time()  # a long catch-up is progress, not a stall
            log.info("partition %s: caught up %s aggregate states from the state topic", partition, restored)
        finally:
            await reader.stop()

    async def _process_partition(self, consumer: AIOKafkaConsumer, tp: TopicPartition, records: list[Any]) -> None:
        producer = self._producers[tp.partition]
        store = self._stores[tp.partition]
        # aiokafka may hand over records it fetched from the group's offset while ``assign`` ran,
        # though ``assign`` then moved the position on: those commands are in committed transactions.
        done = store.command_offset
        if done is not None and records[0].offset < done:
            records = [record for record in records if record.offset >= done]
            if not records:
                return
        touched: dict[str, AggregateState] = {}
        started = time.monotonic()
        steps: list[_Step] = []
        # Known only after a committed batch: whatever goes wrong below leaves it unknown.
        offsets = _EventOffsets(self._next_event_offset.pop(tp.partition, None))
        next_command = records[-1].offset + 1
        try:
            self._batch_dead_letters[tp.partition] = 0
            # Each command's span ends when the transaction does (outermost, so after the commit).
            with _ending_spans(steps) if self.tracer is not None else contextlib.nullcontext():
                async with producer.transaction():
                    self._add_partitions(producer, tp.partition)
                    await self._run_commands(producer, store, tp.partition, records, touched, steps, offsets)
                    ran = time.monotonic()
                    values, next_state_offset, last_event = await self._send_results(
                        producer, tp.partition, steps, touched, next_command
                    )
                    sent = time.monotonic()
        except ProducerFenced:
            # A newer owner of this partition exists (we were presumed dead): stop writing for it.
            log.warning("partition %s: fenced by a newer owner; giving it up", tp.partition)
            store.forget(touched)
            await self._release(tp.partition)
            return
        except (_RecordFault, _Misprediction) as fault:
            # Nothing of the batch is visible; run it again at once (this command rejected, or waiting
            # for the broker's offsets).
            if isinstance(fault, _RecordFault):
                log.error(
                    "partition %s: command at offset %s cannot be produced: %s", tp.partition, fault.offset, fault
                )
                self._faults.setdefault(tp.partition, {})[fault.offset] = fault.rejection
            else:
                log.warning("partition %s: %s; running the batch again", tp.partition, fault)
                self._count("pipeline_processor_mispredicted_batches", 1)
            store.forget(touched)
            consumer.seek(tp, records[0].offset)
            return
        except Exception:
            # Nothing of the batch is visible, or (its commit's answer lost) all of it: forget in-memory
            # changes, learn from the state topic which, and consume from there again later.
            failures = self.failures[tp.partition] = self.failures.get(tp.partition, 0) + 1
            delay = min(RETRY_BACKOFF_S * 2 ** (failures - 1), RETRY_BACKOFF_MAX_S)
            log.exception(
                "batch on partition %s aborted (%s in a row); retrying in %.1fs", tp.partition, failures, delay
            )
            store.forget(touched)
            await self._recover(consumer, tp, records)
            consumer.pause(tp)
            asyncio.get_running_loop().call_later(delay, self._resume, consumer, tp)
            return
        self.failures.pop(tp.partition, None)
        faults = self._faults.get(tp.partition)
        if faults:
            for offset in [o for o in faults if o <= records[-1].offset]:
                del faults[offset]
        store.commit(values, touched, next_state_offset, next_command)
        following = offsets.after_commit(last_event)
        if following is not None:
            self._next_event_offset[tp.partition] = following
        self._copy_to_group(consumer, tp, next_command)
        self.dead_letters += self._batch_dead_letters.pop(tp.partition, 0)
        self.last_progress = time.time()
        self._count("pipeline_processor_batches", 1)
        self._count("pipeline_processor_batch_records", len(records))
        ended = time.monotonic()
        self._count("pipeline_processor_transaction_seconds", ended - started)
        # Where a transaction's time goes: running the commands (their events sent as they go), the
        # outcomes, states and position sent and every record acknowledged, and the commit.
        for phase, seconds in (("run", ran - started), ("results", sent - ran), ("commit", ended - sent)):
            self._count("pipeline_processor_transaction_phase_seconds", seconds, (("phase", phase),))

    def _copy_to_group(self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
        """Commit the position to the consumer group too, every GROUP_OFFSETS_EVERY_S, not waited for.

        The state topic holds the position that counts (written in each batch's transaction); the
        group's copy is for tools that show a group's lag (``kafka-consumer-groups``), so it may lag.
        """
        now = time.monotonic()
        if now - self._group_offsets_at.get(tp.partition, -GROUP_OFFSETS_EVERY_S) < GROUP_OFFSETS_EVERY_S:
            return
        self._group_offsets_at[tp.partition] = now

        async def commit() -> None:
            try:
                await consumer.commit({tp: offset})
            except Exception as exc:  # e.g. a rebalance began: the next batch's copy will do
                log.debug("partition %s: group offset not copied: %s", tp.partition, exc)

        task = asyncio.create_task(commit())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _add_partitions(self, producer: AIOKafkaProducer, partition: int) -> None:
        """Add the three partitions a batch writes to its transaction in one AddPartitionsToTxn.

        aiokafka adds a partition at its first send: the events' partition at the first command, the
        outcomes' and states' once the events are produced, a second AddPartitionsToTxn round trip
        on the transaction's critical path and a second append to ``__transaction_state`` (its
        coordinator work was ~12% of the broker's Java CPU under ingest load, JFR). The batch's
        partitions are known before it runs; ``send`` makes this same call for each.
        """
        manager = producer._txn_manager  # no public API: aiokafka calls this from send()
        if manager is None:
            return
        for topic in (self.config.events_topic, self.config.outcomes_topic, self.config.state_topic):
            manager.maybe_add_partition_to_txn(TopicPartition(topic, partition))

    def _count(self, name: str, value: float, labels: tuple[tuple[str, str], ...] = ()) -> None:
        key = (name, labels)
        self.counters[key] = self.counters.get(key, 0) + value

    async def _recover(self, consumer: AIOKafkaConsumer, tp: TopicPartition, records: list[Any]) -> None:
        """After a failed batch: seek to where the committed transactions end.

        The commit may have happened though its answer was lost. A new producer ends the old one's
        transaction either way (and replaces one aiokafka may have left unusable), and the state
        topic then says which way: caught up from it, the store holds the position that committed.
        """
        await self._renew_producer(tp.partition)
        store = self._stores[tp.partition]
        await self._restore(store, tp.partition)
        if store.command_offset is not None:
            consumer.seek(tp, store.command_offset)
            return
        try:  # a state topic written before it held the position: the group's offset
            committed = await consumer.committed(tp)
        except Exception:  # e.g. the broker is away: the batch's first record is the next one to run
            committed = None
        consumer.seek(tp, committed if committed is not None else records[0].offset)

    def _resume(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        if tp in consumer.assignment():
            consumer.resume(tp)

    async def _dead_letter(self, producer: AIOKafkaProducer, record: Any, reason: str) -> None:
        """The command as it arrived, with why it was not processed (headers), on the dead-letter topic."""
        self._batch_dead_letters[record.partition] = self._batch_dead_letters.get(record.partition, 0) + 1
        headers = [
            ("error", reason[:MAX_ERROR_CHARS].encode()),
            ("source_topic", str(record.topic).encode()),
            ("source_partition", str(record.partition).encode()),
            ("source_offset", str(record.offset).encode()),
        ]
        key = (record.key or b"")[:256]
        value = record.value or b""
        room = MAX_RECORD_BYTES - _record_size(key, b"", headers) - 64
        if len(value) > room:  # the whole command stays on the commands topic
            value = value[:room]
            headers.append(("truncated", b"true"))
        await producer.send(self.config.dead_letter_topic, value, key=key, headers=headers)

    async def _run_commands(
        self,
        producer: AIOKafkaProducer,
        store: PartitionStore,
        partition: int,
        records: list[Any],
        touched: dict[str, AggregateState],
        steps: list[_Step],
        offsets: _EventOffsets,
    ) -> None:
        """Run the batch's commands, appending a step per decodable command to ``steps``."""
        in_batch: dict[str, _Step] = {}
        faults = self._faults.get(partition, {})
        for record in records:
            try:
                envelope = ENVELOPE_DECODER.decode(record.value)
                UUID(envelope.aggregate_id)
                _check_ids(envelope)
            except (msgspec.DecodeError, ValueError, TypeError, RecursionError):
                log.error("undecodable command at %s:%s sent to the dead-letter topic", partition, record.offset)
                await self._dead_letter(producer, record, "undecodable command")
                continue
            fault = faults.get(record.offset)
            step = _Step(envelope, "", offset=record.offset)
            steps.append(step)
            if self.tracer is not None:
                step.span = self.tracer.start_span(
                    f"process {envelope.type}",
                    context=parent_context(header_value(record.headers)),
                    kind=SpanKind.CONSUMER,
                    attributes={"pipeline.command_id": envelope.command_id, "messaging.kafka.offset": record.offset},
                )
            if fault is None:
                try:
                    check_json(envelope.payload, "payload", MAX_STORABLE_DEPTH)
                    step.fingerprint = fingerprint(envelope)
                except InvalidInput as exc:
                    fault = _unprocessable("invalid", f"invalid {envelope.type} command: {exc}")
                except (TypeError, ValueError, RecursionError) as exc:
                    fault = _unprocessable("invalid", f"{envelope.type} command cannot be encoded: {exc}")
            if fault is not None:
                step.rejection, step.unprocessable = fault, True
                await self._dead_letter(producer, record, f"{fault.code}: {fault.message}")
                continue
            state = touched.get(envelope.aggregate_id) or store.get(envelope.aggregate_id)
            touched[envelope.aggregate_id] = state
            step.state = state
            remembered = state.commands.get(envelope.command_id)
            earlier = in_batch.get(envelope.command_id)
            if remembered is not None or earlier is not None:
                first_fingerprint = remembered[1] if remembered is not None else earlier.fingerprint  # type: ignore[union-attr]
                if first_fingerprint != step.fingerprint:
                    step.rejection = Rejection(
                        "idempotency_mismatch",
                        "this Idempotency-Key was already used for a different request",
                        {"command_id": envelope.command_id},
                    )
                elif remembered is not None:
                    step.duplicate_of = remembered[0]
                else:
                    step.same_batch_original = earlier
                continue
            in_batch[envelope.command_id] = step
            await self._apply(producer, partition, step, state, offsets)
            if step.unprocessable:
                assert step.rejection is not None
                await self._dead_letter(producer, record, f"{step.rejection.code}: {step.rejection.message}")

    async def _apply(
        self, producer: AIOKafkaProducer, partition: int, step: _Step, state: AggregateState, offsets: _EventOffsets
    ) -> None:
        envelope = step.envelope
        # A handler that triggers an event and then refuses would leave the aggregate changed in
        # memory; keep a copy to put back. Aggregates hold only what decisions need: small to copy.
        before = copy.deepcopy(state.aggregate)
        try:
            aggregate = self.run_command(envelope, state.aggregate)
        except DomainError as exc:
            step.rejection = Rejection(exc.code, exc.message, dict(exc.details))
            state.aggregate = before
            return
        except Exception as exc:  # a bug must not block the partition behind one command
            log.exception("command %s failed unexpectedly", envelope.command_id)
            step.rejection = Rejection("internal", f"command failed: {type(exc).__name__}")
            state.aggregate = before
            return
        trace = trace_headers(step.span) if step.span is not None else []
        try:
            produced = event_records(self.mapper, envelope, state.last_hash, aggregate, trace)
        except _TooLarge as exc:
            step.rejection, step.unprocessable = _unprocessable("too_large", str(exc)), True
            state.aggregate = before
            return
        except (TypeError, ValueError, RecursionError) as exc:  # e.g. orjson: "Integer exceeds 64-bit range"
            step.rejection, step.unprocessable = _unprocessable("invalid", f"events cannot be encoded: {exc}"), True
            state.aggregate = before
            return
        state.aggregate = aggregate
        for stored, domain_event, headers, event_hash in produced:
            state.last_hash = event_hash
            try:
                future = await producer.send(
                    self.config.events_topic,
                    stored.state,
                    key=envelope.aggregate_id.encode(),
                    partition=partition,
                    headers=headers,
                )
            except MessageSizeTooLargeError as exc:  # refused before it was buffered: this command's fault
                raise _RecordFault(step.offset, _unprocessable("too_large", f"event not produced: {exc}")) from exc
            step.event_futures.append(future)
            step.predicted_offsets.append(offsets.take())
            step.event_types.append(stored.topic.rsplit(".", 1)[-1])
            step.version = stored.originator_version
            if not step.created_at:
                step.created_at = domain_event.timestamp.timestamp()

    async def _send_results(
        self,
        producer: AIOKafkaProducer,
        partition: int,
        steps: list[_Step],
        touched: dict[str, AggregateState],
        next_command: int,
    ) -> tuple[dict[str, bytes], int, int | None]:
        """Produce outcomes, new aggregate states and the position ``next_command`` and wait until the
        broker has them all; return the states, the next state-topic offset and the batch's last event's
        offset (None: no event). The events' offsets are awaited before the outcomes only if not predicted."""
        outcomes: dict[str, bytes] = {}
        for step in steps:
            envelope = step.envelope
            if step.duplicate_of is not None:
                outcome = msgspec.structs.replace(_decode_outcome(step.duplicate_of), duplicate=True)
            elif step.same_batch_original is not None:
                first = _decode_outcome(outcomes[envelope.command_id])
                outcome = msgspec.structs.replace(first, duplicate=True)
            elif step.rejection is not None:
                outcome = Outcome(
                    command_id=envelope.command_id,
                    aggregate_id=envelope.aggregate_id,
                    accepted=False,
                    version=step.state.aggregate.version if step.state and step.state.aggregate else 0,
                    rejection=step.rejection,
                )
            else:
                position = None
                if step.predicted_offsets and step.predicted_offsets[-1] is not None:
                    position = Position(partition, step.predicted_offsets[-1]).token()
                else:
                    for future in step.event_futures:
                        metadata = await future
                        position = Position(metadata.partition, metadata.offset).token()
                outcome = Outcome(
                    command_id=envelope.command_id,
                    aggregate_id=envelope.aggregate_id,
                    accepted=True,
                    version=step.version,
                    position=position,
                    event_types=step.event_types,
                    result={"created_at": step.created_at},
                )
                encoded = encode(outcome)
                outcomes[envelope.command_id] = encoded
                assert step.state is not None
                step.state.commands[envelope.command_id] = (encoded, step.fingerprint)
                while len(step.state.commands) > self.config.commands_per_aggregate:
                    step.state.commands.popitem(last=False)
                await producer.send(
                    self.config.outcomes_topic, encoded, key=envelope.command_id.encode(), partition=partition
                )
                continue
            await producer.send(
                self.config.outcomes_topic,
                _bounded(outcome),
                key=envelope.command_id.encode(),
                partition=partition,
            )
        last_change = {step.envelope.aggregate_id: step for step in steps if step.event_futures}
        values = {aggregate_id: touched[aggregate_id].encode(self.mapper) for aggregate_id in last_change}
        for aggregate_id, value in values.items():
            if _record_size(aggregate_id.encode(), value) > MAX_RECORD_BYTES:
                raise _RecordFault(
                    last_change[aggregate_id].offset,
                    _unprocessable("too_large", f"the aggregate's state would be {len(value)} bytes"),
                )
        futures = [
            await producer.send(self.config.state_topic, value, key=aggregate_id.encode(), partition=partition)
            for aggregate_id, value in values.items()
        ]
        command_position = encode_command_offset(next_command)
        futures.append(
            await producer.send(
                self.config.state_topic, command_position, key=COMMANDS_POSITION_KEY, partition=partition
            )
        )
        last_event = None
        for step in steps:
            for future, predicted in zip(step.event_futures, step.predicted_offsets, strict=True):
                offset = (await future).offset
                if predicted is not None and offset != predicted:
                    raise _Misprediction(f"an event landed at offset {offset}, not {predicted}")
                last_event = offset
        last_state = max([(await future).offset for future in futures])
        return values, last_state + 1, last_event


@contextlib.contextmanager
def _ending_spans(steps: list[_Step]) -> Iterator[None]:
    """End the steps' spans when the block does: with the outcome, or as failed with the batch."""
    try:
        yield
    except BaseException as exc:
        for step in steps:
            if step.span is not None:
                step.span.set_status(StatusCode.ERROR, f"batch not committed: {type(exc).__name__}")
                step.span.end()
        raise
    for step in steps:
        if step.span is not None:
            if step.duplicate_of is not None or step.same_batch_original is not None:
                step.span.set_attribute("pipeline.outcome", "duplicate")
            elif step.rejection is not None:
                step.span.set_attribute("pipeline.outcome", f"rejected_{step.rejection.code}")
            else:
                step.span.set_attributes({"pipeline.outcome": "accepted", "pipeline.version": step.version})
            step.span.end()


def event_records(
    mapper: Mapper[UUID],
    envelope: CommandEnvelope,
    last_hash: str,
    aggregate: Aggregate,
    trace: Sequence[tuple[str, bytes]] = (),
) -> list[tuple[Any, Any, list[tuple[str, bytes]], str]]:
    """The aggregate's new events as (stored event, domain event, headers, hash), chained to ``last_hash``
    and each checked against MAX_RECORD_BYTES (_TooLarge); what the events topic receives. ``trace``:
    the command's span as a ``traceparent`` header (empty when tracing is off)."""
    produced = []
    key = envelope.aggregate_id.encode()
    for domain_event in aggregate.collect_events():
        stored = mapper.to_stored_event(domain_event)
        event_hash = chain_hash(last_hash, stored.topic, envelope.aggregate_id, stored.originator_version, stored.state)
        headers = [
            ("event_id", uuid.uuid4().hex.encode()),
            ("event_type", stored.topic.encode()),
            ("schema_version", str(getattr(type(domain_event), "class_version", 1)).encode()),
            ("aggregate_id", envelope.aggregate_id.encode()),
            ("aggregate_version", str(stored.originator_version).encode()),
            ("command_id", envelope.command_id.encode()),
            ("correlation_id", (envelope.correlation_id or envelope.command_id).encode()),
            ("causation_id", envelope.command_id.encode()),
            ("actor", envelope.actor.user_id.encode()),
            ("actor_role", envelope.actor.role.encode()),
            ("timestamp", domain_event.timestamp.isoformat().encode()),
            ("prev_hash", last_hash.encode()),
            ("hash", event_hash.encode()),
            *trace,
        ]
        size = _record_size(key, stored.state, headers)
        if size > MAX_RECORD_BYTES:
            raise _TooLarge(
                f"the {stored.topic.rsplit('.', 1)[-1]} event would be {size} bytes (limit {MAX_RECORD_BYTES})"
            )
        produced.append((stored, domain_event, headers, event_hash))
        last_hash = event_hash
    return produced


def _bounded(outcome: Outcome) -> bytes:
    """A rejection's encoding, its details and message cut when they would not fit one record."""
    encoded = encode(outcome)
    if len(encoded) + len(outcome.command_id) <= MAX_RECORD_BYTES or outcome.rejection is None:
        return encoded
    rejection = Rejection(outcome.rejection.code, outcome.rejection.message[:MAX_ERROR_CHARS])
    return encode(msgspec.structs.replace(outcome, rejection=rejection))


def _decode_outcome(data: bytes) -> Outcome:
    return msgspec.json.decode(data, type=Outcome)
