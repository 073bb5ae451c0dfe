"""Group commit in the command processor (commands/processor.py `_gather`).

One system for the module, one partition and a long linger (3 s) so the behaviour shows in event
offsets: the events of one Kafka transaction are contiguous, and a transaction's commit marker takes
the offset after them. A lone command is not held back by the linger; commands that arrive together
are gathered with those that follow within the linger into one transaction, the linger counted from
the oldest command's send.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from httpx import AsyncClient

from commands.data import inline_content
from commands.envelope import Actor, CommandEnvelope, Position, encode
from tests.conftest import environment_for
from tests.integration.system import RunningSystem, running_system

pytestmark = pytest.mark.slow

LINGER_S = 3.0


@pytest.fixture(scope="module")
async def system(services: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningSystem]:
    tmp_path = tmp_path_factory.mktemp("group-commit")
    env = {
        **environment_for(services, tmp_path),
        "PIPELINE_KAFKA_PARTITIONS": "1",
        "PIPELINE_KAFKA_PROCESSOR_LINGER_MS": str(int(LINGER_S * 1000)),
        "PIPELINE_KAFKA_PROCESSOR_LINGER_MIN_RECORDS": "2",
    }
    async with running_system(env, tmp_path) as running:
        yield running


async def ingest(client: AsyncClient, text: str) -> int:
    """The offset of the ingest's event."""
    body = {"content": text, "content_type": "text/plain", "metadata": {}}
    response = await client.post("/api/v1/ingest", json=body)
    assert response.status_code == 201, response.text
    position = Position.parse(response.json()["position"])
    assert position.partition == 0
    return position.offset


async def test_a_lone_command_is_not_held_back_by_the_linger(system: RunningSystem) -> None:
    for i in range(3):
        started = time.monotonic()
        await ingest(system.admin, f"lone {i}")
        assert time.monotonic() - started < LINGER_S, "a lone command waited for the linger"


async def test_commands_that_arrive_together_share_a_transaction_with_those_that_follow(
    system: RunningSystem,
) -> None:
    # A burst makes the processor linger; four more, 0.3 s apart, arrive within it.
    burst = [asyncio.create_task(ingest(system.admin, f"burst {i}")) for i in range(8)]
    following = []
    for i in range(4):
        await asyncio.sleep(0.3)
        following.append(asyncio.create_task(ingest(system.admin, f"following {i}")))
    offsets = sorted(await asyncio.gather(*burst))
    later = sorted(await asyncio.gather(*following))
    # The events of one transaction are contiguous; a commit marker takes the offset after them.
    transactions: list[list[int]] = []
    for offset in sorted([*offsets, *later]):
        if transactions and offset == transactions[-1][-1] + 1:
            transactions[-1].append(offset)
        else:
            transactions.append([offset])
    # The first commands of the burst may reach the processor one by one (each then goes alone);
    # once two arrive together it lingers, and the four later ones join that transaction. Without
    # the linger each of them, 0.3 s apart, would be a transaction of its own.
    assert set(later) <= set(transactions[-1]), transactions
    assert len(transactions[-1]) > len(later), transactions


async def test_commands_that_already_waited_are_not_held_back_again(system: RunningSystem) -> None:
    # Commands that queued up while the partition's previous transaction ran have gathered already:
    # the linger counts from the oldest one's send (its record's timestamp), not from the poll.
    # Sent straight to the log stamped 10 s ago, three together go at once instead of lingering 3 s.
    env = system.env
    commands_topic = f"{env['PIPELINE_KAFKA_TOPIC_PREFIX']}.commands"
    outcomes_topic = f"{env['PIPELINE_KAFKA_TOPIC_PREFIX']}.outcomes"
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await reader.start()
    outcomes = TopicPartition(outcomes_topic, 0)
    reader.assign([outcomes])
    await reader.seek_to_end(outcomes)
    await reader.position(outcomes)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    await producer.start()
    waiting: set[str] = set()
    try:
        stamped = int(time.time() * 1000) - 10_000
        sent = []
        for i in range(3):
            content = inline_content(f"waited {i}", 1024)
            assert content is not None
            envelope = CommandEnvelope(
                command_id=str(uuid.uuid4()),
                type="IngestData",
                aggregate_id=str(uuid.uuid4()),
                payload={"content_type": "text/plain", **content, "metadata": {}},
                actor=Actor(user_id="group-commit-test", role="admin"),
            )
            waiting.add(envelope.command_id)
            sent.append(await producer.send(commands_topic, encode(envelope), partition=0, timestamp_ms=stamped))
        started = time.monotonic()
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    try:
        while waiting and time.monotonic() - started < 30:
            for records in (await reader.getmany(timeout_ms=500)).values():
                waiting -= {record.key.decode() for record in records if record.key}
    finally:
        await reader.stop()
    assert not waiting
    assert time.monotonic() - started < LINGER_S, "commands stamped long ago waited for the linger again"
