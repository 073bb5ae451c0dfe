"""Workers SIGKILLed mid-work and restarted: no event applied twice or skipped, no command lost or doubled."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.adapters.kafka import Topics
from infra.runtime.bootstrap import processor_config
from infra.runtime.settings import Settings
from tests.integration.harness import Worker, eventually, query, snapshot_read_models

pytestmark = pytest.mark.slow


# The log also holds the first-start admin's registration: count data object events only.
DATA_EVENTS = "starts_with(event_type, 'DataObject.')"


async def ingest_many(
    client: httpx.AsyncClient, count: int, prefix: str, concurrency: int = 16
) -> list[dict[str, Any]]:
    """Ingest ``count`` objects, each with its own Idempotency-Key; retry timeouts with the same key.

    A connection the server closes as the client reuses it (its keep-alive ran out while the pool
    held it) is a transport error with no answer: retried with the same key too, as a client should."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> dict[str, Any]:
        body = {"content": f"document {prefix} {i}", "content_type": "text/plain", "metadata": {"i": i}}
        async with gate:
            for _ in range(10):
                try:
                    response = await client.post(
                        "/api/v1/ingest", json=body, headers={"Idempotency-Key": f"{prefix}-{i}"}
                    )
                except httpx.TransportError:
                    continue
                if response.status_code == 201:
                    return dict(response.json())
                assert response.status_code in (503, 504), response.text
            raise AssertionError(f"ingest {i} never succeeded")

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def audit_count_reaches(settings: Settings, expected: int):
    async def check() -> bool:
        rows = await query(settings, f"SELECT count(*) FROM audit_log WHERE {DATA_EVENTS}")
        assert rows[0][0] <= expected, f"more events applied than exist: {rows[0][0]} > {expected}"
        return bool(rows[0][0] == expected)

    return check


async def test_projection_killed_mid_batch_converges_to_the_uninterrupted_result(
    client: httpx.AsyncClient, settings: Settings, workers: dict[str, Worker]
) -> None:
    projections = workers["projections"]
    projections.stop()
    created = await ingest_many(client, 400, "p")
    # Restart and SIGKILL it while it is working through the backlog, a few times.
    for delay in (1.5, 0.8, 1.2):
        projections.start()
        await asyncio.sleep(delay)
        projections.kill()
    projections.start()
    await eventually(audit_count_reaches(settings, 400), timeout=120, what="the projection to catch up")

    objects = await query(settings, "SELECT count(*) FROM data_objects")
    events = await query(settings, f"SELECT count(*), count(DISTINCT event_id) FROM audit_log WHERE {DATA_EVENTS}")
    assert objects == [(400,)]
    assert events == [(400, 400)]
    assert {c["object_id"] for c in created} == {
        row[0] for row in await query(settings, "SELECT object_id::text FROM data_objects")
    }

    # An uninterrupted runner over the same log, into another schema, gives the same rows.
    from infra.runtime.rebuild import rebuild_read_models

    fresh = await rebuild_read_models(settings, into=f"{settings.database.schema}_fresh")
    assert await snapshot_read_models(settings) == await snapshot_read_models(settings, schema=fresh)


async def test_processor_killed_and_restarted_loses_and_doubles_no_command(
    client: httpx.AsyncClient, settings: Settings, workers: dict[str, Worker]
) -> None:
    processor = workers["processor"]

    async def crash_during_load() -> None:
        await asyncio.sleep(1.0)
        processor.kill()
        processor.start()

    created, _ = await asyncio.gather(ingest_many(client, 300, "c"), crash_during_load())
    ids = [c["object_id"] for c in created]
    assert len(set(ids)) == 300

    # Retrying every request after the crash returns the first outcome and appends nothing.
    replays = await ingest_many(client, 300, "c")
    assert [r["object_id"] for r in replays] == ids
    assert [r["position"] for r in replays] == [c["position"] for c in created]

    await eventually(audit_count_reaches(settings, 300), timeout=120, what="the projection to catch up")
    rows = await query(settings, f"SELECT count(*), count(DISTINCT aggregate_id) FROM audit_log WHERE {DATA_EVENTS}")
    assert rows == [(300, 300)]
    versions = await query(settings, "SELECT DISTINCT version FROM aggregate_versions")
    assert versions == [(1,)]


async def test_a_restarted_processor_continues_from_the_position_its_transactions_recorded(
    client: httpx.AsyncClient, settings: Settings, workers: dict[str, Worker]
) -> None:
    # Each transaction records the next command offset in the state topic; the consumer group's
    # committed offset is only a copy made every few seconds for monitoring. A processor that
    # resumed from the group's copy would run the commands after it again (answered as duplicates).
    processor = workers["processor"]
    topics = Topics.from_settings(settings.kafka)
    config = processor_config(settings, topics)
    await ingest_many(client, 1, "first")  # each partition's first batch copies its offset at once
    await ingest_many(client, 40, "behind")  # within GROUP_OFFSETS_EVERY_S: not copied
    processor.kill()

    reader = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, group_id=config.group_id)
    await reader.start()
    try:
        partitions = range(settings.kafka.partitions)
        commands = [TopicPartition(topics.commands, p) for p in partitions]
        outcomes = [TopicPartition(topics.outcomes, p) for p in partitions]
        ends = await reader.end_offsets(commands)
        group = {tp: await reader.committed(tp) or 0 for tp in commands}
        assert any(group[tp] < ends[tp] for tp in commands), (group, ends)  # the copy lags: the test can fail
        outcomes_before = await reader.end_offsets(outcomes)
    finally:
        await reader.stop()

    processor.start()
    latest = await ingest_many(client, 1, "after the restart")
    reader = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, isolation_level="read_committed")
    await reader.start()
    try:
        reader.assign(outcomes)
        for tp in outcomes:
            reader.seek(tp, outcomes_before[tp])
        answered: list[str] = []
        ends = await reader.end_offsets(outcomes)
        while [tp for tp in outcomes if await reader.position(tp) < ends[tp]]:
            for records in (await reader.getmany(timeout_ms=1000)).values():
                answered += [orjson.loads(r.value)["aggregate_id"] for r in records]
    finally:
        await reader.stop()
    assert answered == [latest[0]["object_id"]]
