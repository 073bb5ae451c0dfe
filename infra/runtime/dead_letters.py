"""`pipeline dlq` behind the CLI: the projections' dead letters of the live schema (see projections.dead_letters)."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.runtime.bootstrap import build_runner
from infra.runtime.settings import Settings
from projections import dead_letters
from projections.dead_letters import RetryRefused
from projections.events import EventRecord

FETCH_TIMEOUT_MS = 10_000


async def list_letters(settings: Settings, *, include_resolved: bool, limit: int) -> list[dict[str, Any]]:
    """The live schema's dead letters, oldest first."""
    runner = await build_runner(settings)
    try:
        async with runner.pool.connection() as conn:
            return await dead_letters.list_dead_letters(conn, include_resolved=include_resolved, limit=limit)
    finally:
        await runner.pool.close()


async def skip_letter(settings: Settings, letter_id: int, note: str) -> None:
    """Resolve a letter without applying its event; RetryRefused if there is no such unresolved letter."""
    runner = await build_runner(settings)
    try:
        async with runner.pool.connection() as conn:
            if not await dead_letters.skip(conn, letter_id, note):
                raise RetryRefused(f"no unresolved dead letter {letter_id}")
    finally:
        await runner.pool.close()


async def retry_letter(settings: Settings, letter_id: int) -> EventRecord:
    """Read the letter's event from the events topic and apply it (projections.dead_letters.retry)."""
    runner = await build_runner(settings)
    try:
        async with runner.pool.connection() as conn:
            letter = await dead_letters.dead_letter(conn, letter_id)
        if letter is None:
            raise RetryRefused(f"no unresolved dead letter {letter_id}")
        record = await _read_record(
            settings, runner.config.events_topic, letter["topic_partition"], letter["topic_offset"]
        )
        try:
            event = EventRecord.from_kafka(record, runner.mapper)
        except Exception as exc:
            raise RetryRefused(f"the event is still undecodable: {type(exc).__name__}: {exc}") from exc
        async with runner.pool.connection() as conn:
            await dead_letters.retry(
                conn, letter_id, event, runner.projectors, (runner.config.projection, runner.config.events_topic)
            )
        return event
    finally:
        await runner.pool.close()


async def _read_record(settings: Settings, topic: str, partition: int, offset: int) -> Any:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        batch = await consumer.getmany(tp, timeout_ms=FETCH_TIMEOUT_MS, max_records=1)
        for record in batch.get(tp, []):
            if record.offset == offset:
                return record
        raise RetryRefused(f"the event at {topic}:{partition}:{offset} is no longer in the log (retention?)")
    finally:
        await consumer.stop()
