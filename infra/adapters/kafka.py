"""Kafka topics of the system and their creation (idempotent, from settings)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from infra.runtime.settings import KafkaSettings

log = logging.getLogger("pipeline.kafka")


@dataclass(frozen=True)
class Topics:
    commands: str
    events: str
    outcomes: str
    state: str
    dead_letters: str

    @classmethod
    def from_settings(cls, kafka: KafkaSettings) -> Topics:
        return cls(
            commands=kafka.topic("commands"),
            events=kafka.topic("events"),
            outcomes=kafka.topic("outcomes"),
            state=kafka.topic("aggregate-state"),
            dead_letters=kafka.topic("commands.dead-letters"),
        )


async def ensure_topics(kafka: KafkaSettings) -> Topics:
    """Create the system's topics if they are missing; partition counts come from settings."""
    topics = Topics.from_settings(kafka)
    partitions = kafka.partitions
    wanted = [
        NewTopic(topics.commands, partitions, 1, topic_configs={"retention.ms": str(7 * 24 * 3600 * 1000)}),
        # The event log is the source of truth: kept forever.
        NewTopic(topics.events, partitions, 1, topic_configs={"retention.ms": "-1", "retention.bytes": "-1"}),
        NewTopic(topics.outcomes, partitions, 1, topic_configs={"retention.ms": str(24 * 3600 * 1000)}),
        # Latest state per aggregate: compaction keeps one record per key.
        NewTopic(topics.state, partitions, 1, topic_configs={"cleanup.policy": "compact"}),
        NewTopic(topics.dead_letters, 1, 1, topic_configs={"retention.ms": "-1"}),
    ]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                await admin.create_topics(missing)
            log.info("created topics %s", ", ".join(t.name for t in missing))
    finally:
        await admin.close()
    return topics


async def topic_partitions(bootstrap_servers: str, topic: str) -> list[int]:
    """The partition numbers of ``topic`` (waits for metadata, unlike a bare consumer)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        return sorted(await producer.partitions_for(topic))
    finally:
        await producer.stop()


async def end_offsets(bootstrap_servers: str, topic: str) -> dict[int, int]:
    """partition -> end offset of what is committed in ``topic`` now (read_committed)."""
    tps = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap_servers, topic)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()
