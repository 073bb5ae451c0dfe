"""Group commit in the command processor (commands/processor.py `_gather`).

One system for the module, one partition and a long linger (3 s) so the behaviour shows in event
offsets: the events of one Kafka transaction are contiguous, and a transaction's commit marker takes
the offset after them. A lone command is not held back by the linger; commands that arrive together
are gathered with those that follow within the linger into one transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from httpx import AsyncClient

from commands.envelope import Position
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
