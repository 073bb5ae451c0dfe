"""A consumer-group rebalance listener that hands partitions to an owner's assign/revoke coroutines."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiokafka import ConsumerRebalanceListener, TopicPartition

PartitionsHook = Callable[[set[TopicPartition]], Awaitable[None]]


class Rebalance(ConsumerRebalanceListener):
    """aiokafka awaits these between fetches: revoke first, then assign."""

    def __init__(self, assigned: PartitionsHook, revoked: PartitionsHook) -> None:
        self._assigned = assigned
        self._revoked = revoked

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._assigned(assigned)
