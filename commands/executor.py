"""The graph executor: a process manager that reacts to execution events and issues commands.

It is a consumer group on the events topic. It folds the events of executions into views and runs
each unfinished execution (``ExecutionRun``). Its committed offset on a partition never passes the
``Submitted`` event of an execution still unfinished there, so after a crash or a rebalance the new
owner reads those executions' events again, learns which nodes completed (and their outputs), and
resumes them. A partition's runs start only once the owner has read up to the end offset it saw on
assignment: before that, a completion recorded by the previous owner might still be unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from eventsourcing.persistence import Mapper, StoredEvent

from commands.consumers import group_consumer
from commands.execution_run import ExecutionRun, ExecutionView, RunDeps
from commands.rebalance import Rebalance

log = logging.getLogger("pipeline.executor")
PREFIX = "domain.execution:Execution."
_PREFIX_BYTES = PREFIX.encode()
# The execution events whose content the executor reads (graph and inputs; a node's output).
_DECODED = frozenset({"Submitted", "NodeCompleted"})
COMMIT_INTERVAL = 1.0
REVOKE_COMMIT_TIMEOUT = 10.0


@dataclass(frozen=True)
class ExecutorConfig:
    bootstrap_servers: str
    events_topic: str
    group_id: str
    max_running: int = 16
    fetch_max_wait_ms: int = 500


class Executor:
    def __init__(self, config: ExecutorConfig, mapper: Mapper[UUID], deps: RunDeps) -> None:
        self.config = config
        self.mapper = mapper
        self.deps = deps
        self.counters = deps.counters  # node counts and times (infra.runtime.heartbeat writes them out)
        self.views: dict[str, ExecutionView] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.catch_up: dict[int, int] = {}  # partition -> end offset to read before starting runs
        self.positions: dict[int, int] = {}  # partition -> next offset to read
        self.consumer: AIOKafkaConsumer | None = None
        self._slots = asyncio.Semaphore(config.max_running)
        # Wall-clock times for the watchdog (infra.runtime.heartbeat): the loop turned / records were read.
        self.last_loop = 0.0
        self.last_progress = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """React to execution events until ``stop`` is set."""
        consumer = group_consumer(
            self.config.bootstrap_servers,
            self.config.group_id,
            self.config.events_topic,
            Rebalance(self.assigned, self.revoked),
            fetch_max_wait_ms=self.config.fetch_max_wait_ms,
        )
        self.consumer = consumer
        await consumer.start()
        last_commit = time.monotonic()
        try:
            while not stop.is_set():
                self.last_loop = time.time()
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
                if batches:
                    self.last_progress = time.time()
                for tp, records in batches.items():
                    for record in records:
                        self._fold(tp.partition, record)
                    self.positions[tp.partition] = records[-1].offset + 1
                for tp in consumer.assignment():
                    self.positions[tp.partition] = await consumer.position(tp)
                self._start_runs()
                if time.monotonic() - last_commit > COMMIT_INTERVAL:
                    try:
                        await self._commit()
                    except KafkaError as exc:
                        # E.g. the group rebalanced while the broker was away (CommitFailedError): the
                        # rejoin that follows seeks to what was committed, and re-reading is harmless.
                        log.warning("committing executor offsets failed (%r); next time", exc)
                    last_commit = time.monotonic()
        finally:
            await self._cancel_runs(set(self.positions))
            with contextlib.suppress(Exception):
                await self._commit()
            await consumer.stop()

    def _fold(self, partition: int, record: Any) -> None:
        # Most events are not executions': look at the one header that says so before anything else.
        event_type = next((value for key, value in record.headers if key == "event_type"), b"")
        if not event_type.startswith(_PREFIX_BYTES):
            return
        headers = {key: value.decode() for key, value in record.headers}
        kind = headers["event_type"].removeprefix(PREFIX)
        execution_id = headers.get("aggregate_id", "")
        if kind != "Submitted" and execution_id not in self.views:
            return  # finished before this reader's start
        event: Any = None
        if kind in _DECODED:  # the others say all the executor needs in their type
            try:
                stored = StoredEvent(
                    UUID(execution_id), int(headers["aggregate_version"]), headers["event_type"], record.value
                )
                event = self.mapper.to_domain_event(stored)
            except (KeyError, ValueError, TypeError):
                # A poison record must not stop every execution behind it; the projections dead-letter it.
                log.exception("undecodable execution event at %s:%s skipped", partition, record.offset)
                return
        if kind == "Submitted":
            self.views[execution_id] = ExecutionView(
                execution_id,
                event.graph,
                event.inputs,
                event.submitter,
                partition,
                record.offset,
                event.options,
                event.submitter_role,
            )
            return
        view = self.views[execution_id]
        if kind == "NodeCompleted":
            view.completed[event.node_id] = (event.output, event.output_location)
        elif kind in {"Completed", "Failed", "Cancelled"}:
            view.status = kind.lower()
        elif kind == "NodeStarted":
            view.status = "running"
        view.changed.set()
        if view.finished and execution_id not in self.tasks:
            del self.views[execution_id]

    def _start_runs(self) -> None:
        for execution_id, view in list(self.views.items()):
            if view.finished or execution_id in self.tasks:
                continue
            if self.positions.get(view.partition, 0) < self.catch_up.get(view.partition, 0):
                continue
            self.tasks[execution_id] = asyncio.create_task(self._run(view))

    async def _run(self, view: ExecutionView) -> None:
        try:
            await ExecutionRun(view, self.deps).run(self._slots)
        except asyncio.CancelledError:
            raise
        except Exception:
            # e.g. a command timed out: the view stays, and a later batch starts the run again.
            log.exception("execution %s: run interrupted; it will resume", view.execution_id)
            await asyncio.sleep(1.0)
        finally:
            self.tasks.pop(view.execution_id, None)
            if view.finished:
                self.views.pop(view.execution_id, None)

    async def _commit(self) -> None:
        """Commit each partition up to the first Submitted event of an unfinished execution."""
        if self.consumer is None:
            return
        offsets = {}
        for tp in self.consumer.assignment():
            if tp.partition not in self.positions:
                continue
            pending = [v.first_offset for v in self.views.values() if v.partition == tp.partition and not v.finished]
            offsets[tp] = min([*pending, self.positions[tp.partition]])
        if offsets:
            await self.consumer.commit(offsets)

    async def _cancel_runs(self, partitions: set[int]) -> None:
        for execution_id, task in list(self.tasks.items()):
            view = self.views.get(execution_id)
            if view is None or view.partition in partitions:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for execution_id, view in list(self.views.items()):
            if view.partition in partitions:
                del self.views[execution_id]

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        assert self.consumer is not None
        ends = await self.consumer.end_offsets(list(partitions))
        for tp in partitions:
            committed = await self.consumer.committed(tp)
            # Read from the committed offset again even if this process owned the partition before:
            # its views of the partition were dropped on revocation.
            self.consumer.seek(tp, committed or 0)
            self.positions[tp.partition] = committed or 0
            self.catch_up[tp.partition] = ends[tp]

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        # Bounded: the group cannot rejoin until this returns, and a commit waits for a coordinator
        # for as long as the broker is away. Not committing only means re-reading some events.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._commit(), REVOKE_COMMIT_TIMEOUT)
        numbers = {tp.partition for tp in partitions}
        await self._cancel_runs(numbers)
        for number in numbers:
            self.positions.pop(number, None)
            self.catch_up.pop(number, None)
