"""The command bus's two deadlines (infra/adapters/command_bus.py): the broker must take a command within
``send_timeout`` (else KafkaTimeoutError: 503), and its outcome must come within ``timeout`` of that
(else CommandTimeout: 504). Kafka itself is replaced by a producer that takes commands, or not; the
outcome is delivered the way the bus's outcome reader delivers it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from commands.envelope import Actor, CommandEnvelope, Outcome, encode
from infra.adapters.command_bus import CommandTimeout, KafkaCommandBus
from infra.adapters.kafka import Topics

TOPICS = Topics("t.commands", "t.events", "t.outcomes", "t.state", "t.dead-letters")


class Producer:
    """Takes each command after ``delay`` seconds (None: never); remembers what it took."""

    def __init__(self, delay: float | None) -> None:
        self.delay = delay
        self.taken: list[tuple[str, bytes, bytes | None]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None) -> None:
        if self.delay is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay or 0)
        self.taken.append((topic, value, key))


def bus_with(producer: Producer, timeout: float = 0.3, send_timeout: float = 0.2) -> KafkaCommandBus:
    bus = KafkaCommandBus("unused:9092", TOPICS, timeout, send_timeout)
    bus._producer = producer
    return bus


def envelope(command_id: str = "c1") -> CommandEnvelope:
    return CommandEnvelope(
        command_id=command_id, type="IngestData", aggregate_id="a1", payload={}, actor=Actor(user_id="u", role="user")
    )


async def test_an_outcome_that_comes_is_returned_and_its_waiter_forgotten() -> None:
    producer = Producer(0.0)
    bus = bus_with(producer)
    sent = envelope()

    async def deliver() -> None:  # as _read_outcomes does
        while not producer.taken:
            await asyncio.sleep(0.001)
        for future in bus._pending[sent.command_id]:
            future.set_result(Outcome(command_id=sent.command_id, aggregate_id="a1", accepted=True, version=1))

    delivering = asyncio.create_task(deliver())
    outcome = await bus.submit(sent, encode(sent))
    await delivering
    assert outcome.accepted and outcome.version == 1
    assert producer.taken == [("t.commands", encode(sent), b"a1")]
    assert bus._pending == {}


async def test_a_broker_that_does_not_take_the_command_answers_unavailable_after_the_send_timeout() -> None:
    bus = bus_with(Producer(None), timeout=5.0, send_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(KafkaTimeoutError):
        await bus.submit(envelope())
    assert 0.15 < time.monotonic() - started < 2.0  # the send's deadline, not the outcome's
    assert bus._pending == {}


async def test_the_outcome_deadline_counts_from_the_send() -> None:
    """A slow send (0.25 s of a 0.4 s send timeout) leaves the outcome its whole 0.3 s: 0.55 s in all."""
    bus = bus_with(Producer(0.25), timeout=0.3, send_timeout=0.4)
    started = time.monotonic()
    with pytest.raises(CommandTimeout):
        await bus.submit(envelope())
    assert 0.5 < time.monotonic() - started < 2.0
    assert bus._pending == {}
