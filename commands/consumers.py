"""The one way a worker joins a consumer group: the processor, the projection runner and the executor.

Each reads what the processor commits (``read_committed``: never an aborted transaction's records),
commits its own offsets where its guarantee needs them (in a Kafka transaction, in PostgreSQL, or
behind its unfinished executions; so never automatically) and, as a new group, starts from the
beginning of the log. Only the topic, the rebalance listener and the fetch sizes differ.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

AIOKAFKA_FETCH_MAX_WAIT_MS = 500  # aiokafka's default
AIOKAFKA_MAX_PARTITION_FETCH_BYTES = 1 << 20  # aiokafka's default


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
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        fetch_max_wait_ms=fetch_max_wait_ms,
        max_partition_fetch_bytes=max_partition_fetch_bytes,
    )
    consumer.subscribe([topic], listener=listener)
    return consumer
