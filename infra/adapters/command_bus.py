"""The API's side of the write path: produce a command, wait for its outcome.

Commands go to the commands topic keyed by aggregate id. Outcomes come back on the outcomes
topic; every API process reads all its partitions (from the end, as of its start) and resolves
the requests it is waiting for. That keeps replicas independent at the cost of each reading
every outcome, which is small next to the requests themselves.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaTimeoutError
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from prometheus_client.metrics import Counter, Histogram

from commands.envelope import OUTCOME_DECODER, CommandEnvelope, Outcome, encode
from commands.tasks import cancel_and_wait
from commands.tracing import trace_headers
from infra.adapters.kafka import Topics
from infra.runtime.metrics import COMMAND_ROUNDTRIP, COMMANDS
from infra.runtime.settings import KafkaSettings

log = logging.getLogger("pipeline.command_bus")


class MissingTopics(Exception):
    """The broker answers but lacks topics the system needs."""


class CommandTimeout(Exception):
    """No outcome in time; the command may still be applied (retry with the same Idempotency-Key)."""


class KafkaCommandBus:
    """Submit command envelopes and await their outcomes."""

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Topics,
        timeout: float,
        send_timeout: float = 5.0,
        fetch_max_wait_ms: int = 500,
        tracer: Tracer | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self.timeout = timeout
        self.send_timeout = send_timeout
        self.fetch_max_wait_ms = fetch_max_wait_ms  # outcomes are transactional: see kafka.event_fetch_max_wait_ms
        self._pending: dict[str, list[asyncio.Future[Outcome]]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._offsets: AIOKafkaConsumer | None = None  # read_uncommitted, for events_end; made on first use
        self._offsets_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.tracer = tracer  # None: tracing off, no span and no header (infra.runtime.tracing)

    @classmethod
    def from_settings(cls, kafka: KafkaSettings, topics: Topics, tracer: Tracer | None = None) -> KafkaCommandBus:
        """The bus as every process that submits commands (the API, the executor) configures it."""
        return cls(
            kafka.bootstrap_servers,
            topics,
            kafka.command_timeout_seconds,
            kafka.send_timeout_seconds,
            kafka.event_fetch_max_wait_ms,
            tracer,
        )

    async def start(self) -> None:
        """Connect, and position the outcome reader at the end before any command is sent."""
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers, enable_idempotence=True, acks="all", linger_ms=1
        )
        await self._producer.start()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=self.fetch_max_wait_ms,
        )
        await consumer.start()
        self._consumer = consumer
        partitions = await self._producer.partitions_for(self.topics.outcomes)  # waits for metadata
        tps = [TopicPartition(self.topics.outcomes, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        self._task = asyncio.create_task(self._read_outcomes())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._consumer is not None:
            await self._consumer.stop()
        if self._offsets is not None:
            await self._offsets.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def submit(self, envelope: CommandEnvelope, encoded: bytes | None = None) -> Outcome:
        """Send the command and wait for its outcome; CommandTimeout after the configured time.

        ``encoded``: the envelope's encoding, when the caller has it already (e.g. to check its size).
        """
        assert self._producer is not None, "command bus not started"
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        waiters = self._pending.setdefault(envelope.command_id, [])
        waiters.append(future)
        started = time.monotonic()
        outcome_label = "unavailable"
        span = None
        headers = None
        if self.tracer is not None:  # a child of the current (HTTP) span; the processor's is its child
            span = self.tracer.start_span(
                f"send {envelope.type}",
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.destination.name": self.topics.commands,
                    "pipeline.command_id": envelope.command_id,
                },
            )
            headers = trace_headers(span)
        value = encode(envelope) if encoded is None else encoded
        sent = False
        try:
            # One deadline for both waits (asyncio.wait_for made a task per send): first the send's,
            # then, once the broker has the command, the outcome's. Without a bound, a send to a broker
            # that is gone waits for metadata and retries for request_timeout_ms (40 s) and more; the
            # caller should hear "unavailable" at once.
            async with asyncio.timeout(self.send_timeout) as deadline:
                await self._producer.send_and_wait(
                    self.topics.commands, value, key=envelope.aggregate_id.encode(), headers=headers
                )
                sent = True
                deadline.reschedule(asyncio.get_running_loop().time() + self.timeout)
                outcome = await future
            outcome_label = _outcome_label(outcome)
            _roundtrip(envelope.type).observe(time.monotonic() - started)
            return outcome
        except TimeoutError as exc:
            if not sent:
                # A KafkaError answers 503 unavailable. The record may still be delivered later:
                # a retry with the same Idempotency-Key is safe either way.
                raise KafkaTimeoutError(f"the broker did not take the command within {self.send_timeout} s") from exc
            outcome_label = "timeout"
            raise CommandTimeout(envelope.command_id) from exc
        finally:
            _commands(envelope.type, outcome_label).inc()
            if span is not None:
                span.set_attribute("pipeline.outcome", outcome_label)
                if not outcome_label.startswith(("accepted", "duplicate", "rejected")):
                    span.set_status(StatusCode.ERROR, outcome_label)
                span.end()
            waiters.remove(future)
            if not waiters:
                self._pending.pop(envelope.command_id, None)

    async def check_broker(self, timeout: float) -> None:
        """Raise unless the broker answers a metadata request within ``timeout`` seconds and has the
        system's topics (for /health and /ready)."""
        assert self._producer is not None, "command bus not started"
        cluster = await asyncio.wait_for(self._producer.client.fetch_all_metadata(), timeout)
        wanted = {self.topics.commands, self.topics.events, self.topics.outcomes, self.topics.state}
        missing = wanted - cluster.topics()
        if missing:
            raise MissingTopics(", ".join(sorted(missing)))

    async def events_end(self, partition: int) -> int | None:
        """The events partition's high watermark: every event appended to it, committed or not, is below.

        None when the topic has no such partition. Raises when the broker does not answer, so a
        caller can fall back to waiting. Used only on a read's slow path, to refuse a position
        token that no write returned instead of waiting for it until the timeout, and once per
        named partition when an event stream starts from a position (api.event_streams). Not the last
        stable offset: a transaction's markers reach its partitions one by one, so an API process
        can hold an outcome while the events partition's LSO is still below the event it names.
        """
        assert self._producer is not None, "command bus not started"
        partitions = await self._producer.partitions_for(self.topics.events)
        if partition not in partitions:
            return None
        async with self._offsets_lock:
            if self._offsets is None:
                offsets = AIOKafkaConsumer(
                    bootstrap_servers=self.bootstrap_servers,
                    enable_auto_commit=False,
                    isolation_level="read_uncommitted",
                )
                await asyncio.wait_for(offsets.start(), 5.0)
                self._offsets = offsets
        tp = TopicPartition(self.topics.events, partition)
        ends = await asyncio.wait_for(self._offsets.end_offsets([tp]), 2.0)
        return int(ends[tp])

    async def _read_outcomes(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading outcomes failed; retrying")
                await asyncio.sleep(0.5)
                continue
            for records in batches.values():
                for record in records:
                    waiters = self._pending.get(record.key.decode()) if record.key else None
                    if not waiters:
                        continue
                    outcome = OUTCOME_DECODER.decode(record.value)
                    for future in waiters:
                        if not future.done():
                            future.set_result(outcome)


def _outcome_label(outcome: Outcome) -> str:
    """accepted, duplicate, or rejected_<code> (a handful of codes: the label stays small)."""
    if outcome.duplicate:
        return "duplicate"
    if outcome.accepted:
        return "accepted"
    return f"rejected_{outcome.rejection.code}" if outcome.rejection else "rejected"


# The series of a command type (and outcome), looked up once: ``labels`` checks and locks on every
# call. Command types and outcome labels are few.
@functools.cache
def _roundtrip(command_type: str) -> Histogram:
    return COMMAND_ROUNDTRIP.labels(command_type)


@functools.cache
def _commands(command_type: str, outcome: str) -> Counter:
    return COMMANDS.labels(command_type, outcome)
