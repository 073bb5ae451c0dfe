"""infra.provision.services against the real programs: Apache Kafka (KRaft), PostgreSQL and Redis.

Uses its own data directory, not the session's services, because it stops and restarts them.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import psycopg
import redis.asyncio as redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.provision.services import Endpoints, ManagedServices

TOPIC = "services-probe"


async def produce_in_transactions(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, 1, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id="services-probe", enable_idempotence=True)
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(TOPIC, b"aborted", key=b"k1")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(TOPIC, b"committed", key=b"k2")
    finally:
        await producer.stop()


async def read_committed(bootstrap: str) -> list[bytes]:
    """Every committed value in the topic, read up to its end offset (the last stable one)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        partition = TopicPartition(TOPIC, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        end = (await consumer.end_offsets([partition]))[partition]
        values: list[bytes] = []
        async with asyncio.timeout(30):
            while await consumer.position(partition) < end:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    values.extend(record.value for record in records if record.value is not None)
        return values
    finally:
        await consumer.stop()


def accepts_connections(address: str) -> bool:
    host, _, port = address.rpartition("@")[2].split("/")[0].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return False
    return True


def all_addresses(endpoints: Endpoints) -> list[str]:
    return [endpoints.kafka_bootstrap, endpoints.database_url.split("//")[1], endpoints.redis_url.split("//")[1]]


async def test_services_serve_and_keep_their_data_across_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "services"
    first = ManagedServices(data_dir)
    try:
        endpoints = await asyncio.to_thread(first.start)
        assert await asyncio.to_thread(first.start) == endpoints  # idempotent: nothing started twice

        await produce_in_transactions(endpoints.kafka_bootstrap)
        assert await read_committed(endpoints.kafka_bootstrap) == [b"committed"]
        async with await psycopg.AsyncConnection.connect(endpoints.database_url) as conn:
            await conn.execute("CREATE TABLE kept (note text)")
            await conn.execute("INSERT INTO kept VALUES ('from the first run')")
            assert await (await conn.execute("SELECT current_database()")).fetchone() == ("pipeline",)
        async with redis.Redis.from_url(endpoints.redis_url) as client:
            assert await client.ping()
            await client.set("kept", "from the first run")
    finally:
        await asyncio.to_thread(first.stop)
    assert not any(accepts_connections(address) for address in all_addresses(endpoints))

    second = ManagedServices(data_dir)
    try:
        again = await asyncio.to_thread(second.start)
        assert again == endpoints  # the saved ports were free again, so they are reused
        assert await read_committed(again.kafka_bootstrap) == [b"committed"]
        async with await psycopg.AsyncConnection.connect(again.database_url) as conn:
            assert await (await conn.execute("SELECT note FROM kept")).fetchall() == [("from the first run",)]
        async with redis.Redis.from_url(again.redis_url) as client:
            assert await client.get("kept") == b"from the first run"
    finally:
        await asyncio.to_thread(second.stop)


def test_given_addresses_are_used_as_they_are_and_nothing_is_started(tmp_path: Path) -> None:
    given = Endpoints("127.0.0.1:1", "postgresql://postgres@127.0.0.1:2/pipeline", "redis://127.0.0.1:3/0")
    managed = ManagedServices(
        tmp_path, kafka_bootstrap=given.kafka_bootstrap, database_url=given.database_url, redis_url=given.redis_url
    )
    with managed:
        assert managed.start() == given
    assert not (tmp_path / "kafka").exists()
    assert not (tmp_path / "postgres").exists()
