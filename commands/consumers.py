"""The one way a worker joins a consumer group: the processor, the projection runner and the executor.

Each reads what the processor commits (``read_committed``: never an aborted transaction's records),
commits its own offsets where its guarantee needs them (in a Kafka transaction, in PostgreSQL, or
behind its unfinished executions; so never automatically) and, as a new group, starts from the
beginning of the log. Only the topic, the rebalance listener and the fetch sizes differ.
A rebuild's workers read fixed partitions each (``assigned_consumer``): no group, no rebalance.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

AIOKAFKA_FETCH_MAX_WAIT_MS = 500  # aiokafka's default
AIOKAFKA_MAX_PARTITION_FETCH_BYTES = 1 << 20  # aiokafka's default


def _consumer(
    group_id: str | None,
    max_poll_records: int | None,
    fetch_max_wait_ms: int,
    max_partition_fetch_bytes: int,
    bootstrap_servers: str,
) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        fetch_max_wait_ms=fetch_max_wait_ms,
        max_partition_fetch_bytes=max_partition_fetch_bytes,
    )


def group_consumer(
    bootstrap_servers: str,
    group_id: str,
    topic: str,
    listener: ConsumerRebalanceListener,
    max_poll_records: int | None = None,
    fetch_max_wait_ms: int = AIOKAFKA_FETCH_MAX_WAIT_MS,
    max_partition_fetch_bytes: int = AIOKAFKA_MAX_PARTITION_FETCH_BYTES,
) -> AIOKafkaConsumer:
    """A member of ``group_id`` subscribed to ``topic`` with ``listener``; not started yet."""
    consumer = _consumer(group_id, max_poll_records, fetch_max_wait_ms, max_partition_fetch_bytes, bootstrap_servers)
    consumer.subscribe([topic], listener=listener)
    return consumer


def assigned_consumer(
    bootstrap_servers: str,
    max_poll_records: int | None = None,
    fetch_max_wait_ms: int = AIOKAFKA_FETCH_MAX_WAIT_MS,
    max_partition_fetch_bytes: int = AIOKAFKA_MAX_PARTITION_FETCH_BYTES,
) -> AIOKafkaConsumer:
    """A consumer of no group, reading the same way; ``assign`` its partitions once started."""
    return _consumer(None, max_poll_records, fetch_max_wait_ms, max_partition_fetch_bytes, bootstrap_servers)
