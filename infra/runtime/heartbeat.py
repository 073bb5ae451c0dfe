"""Worker heartbeats: each worker says, about once a second, that it lives, moves and how far behind it is.

A worker process writes ``<data_dir>/heartbeats/<worker>.json``::

    {"worker", "pid", "written_at", "loop_at", "progress_at", "lag", "dead_letters",
     "partition_lag", "partition_lag_seconds", "counters"}

(wall-clock seconds). ``written_at`` comes from a task of its own, so it goes stale only when the event
loop is blocked or the process is frozen; ``loop_at`` is the last turn of the worker's fetch loop;
``progress_at`` the last time it handled records or had nothing to do; ``lag`` the records its consumer
has not consumed yet (last stable offset minus position, summed over its partitions); ``dead_letters``
the records it set aside since it started (commands it rejected as unprocessable, events it could not
apply; see the processor's and the runner's docstrings for the policies); ``partition_lag`` the lag by
partition, ``partition_lag_seconds`` how old the last handled record of a partition with lag is (from the
worker's ``handled_at``: partition -> record timestamp), and ``counters`` the worker's counters
(``[{"name", "labels", "value"}]``) that the API's metrics route shows (infra.runtime.metrics). The supervisor's
watchdog (``stall_reason``) and ``/health`` read these files: a file read costs less than asking Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer

log = logging.getLogger("pipeline.heartbeat")
INTERVAL = 1.0
# Batches of one partition failing in a row (backing off 0.1 s, doubling) before /health says "retrying".
FAILING_BATCHES = 5
POSITION_TIMEOUT = 0.5  # a position still being reset (no committed offset yet) is skipped, not awaited


class Progressing(Protocol):
    """What a worker exposes to its heartbeat (the processor, the projection runner, the executor)."""

    last_loop: float
    last_progress: float

    @property
    def consumer(self) -> AIOKafkaConsumer | None: ...


@dataclass(frozen=True)
class Beat:
    worker: str
    pid: int
    written_at: float
    loop_at: float
    progress_at: float
    lag: int
    dead_letters: int = 0
    partition_lag: dict[str, int] = field(default_factory=dict)
    partition_lag_seconds: dict[str, float] = field(default_factory=dict)
    counters: list[dict[str, Any]] = field(default_factory=list)
    # partition -> batches in a row that failed and are being retried (the worker's ``failures``)
    failing: dict[str, int] = field(default_factory=dict)


def heartbeat_path(data_dir: str | Path, worker: str) -> Path:
    """Where ``worker`` writes its heartbeat."""
    return Path(data_dir) / "heartbeats" / f"{worker}.json"


def read_beat(path: Path) -> Beat | None:
    """The last heartbeat written to ``path``; None when there is none (or it is unreadable)."""
    try:
        return Beat(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


async def consumer_lag(consumer: AIOKafkaConsumer) -> dict[int, int]:
    """Records not yet consumed by partition: last stable offset (from the latest fetch) minus position."""
    lag: dict[int, int] = {}
    for tp in consumer.assignment():
        end = consumer.last_stable_offset(tp)
        if end is None:
            end = consumer.highwater(tp)
        if end is None:
            continue  # nothing fetched yet for it
        try:
            position = await asyncio.wait_for(consumer.position(tp), POSITION_TIMEOUT)
        except (TimeoutError, Exception):
            continue
        lag[tp.partition] = max(0, end - position)
    return lag


def counter_samples(source: object) -> list[dict[str, Any]]:
    """A worker's ``counters`` ({(name, ((label, value), ...)): value}) as JSON-friendly samples."""
    counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = getattr(source, "counters", {})
    return [{"name": name, "labels": dict(labels), "value": value} for (name, labels), value in counters.items()]


async def beat(path: Path, worker: str, source: Progressing, interval: float = INTERVAL) -> None:
    """Write ``source``'s heartbeat to ``path`` every ``interval`` until cancelled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    idle_at = started  # the last time there was nothing to do counts as progress
    while True:
        by_partition: dict[int, int] = {}
        consumer = source.consumer
        if consumer is not None:
            with contextlib.suppress(Exception):
                by_partition = await consumer_lag(consumer)
        lag = sum(by_partition.values())
        now = time.time()
        handled_at: dict[int, float] = getattr(source, "handled_at", {})
        if lag == 0:
            idle_at = now
        record = Beat(
            worker=worker,
            pid=os.getpid(),
            written_at=now,
            loop_at=source.last_loop or started,
            progress_at=max(source.last_progress, idle_at),
            lag=lag,
            dead_letters=int(getattr(source, "dead_letters", 0)),
            partition_lag={str(p): n for p, n in by_partition.items()},
            partition_lag_seconds={
                str(p): round(max(0.0, now - handled_at[p]), 3) if n and p in handled_at else 0.0
                for p, n in by_partition.items()
            },
            counters=counter_samples(source),
            failing={str(p): n for p, n in getattr(source, "failures", {}).items() if n},
        )
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(asdict(record)))
            tmp.replace(path)  # readers never see half a file
        except OSError:
            log.warning("cannot write heartbeat %s", path, exc_info=True)
        await asyncio.sleep(interval)


def stall_reason(beat: Beat | None, pid: int, now: float, since: float, stall_seconds: float) -> str | None:
    """Why the worker process ``pid`` counts as stuck, or None.

    ``since`` is when the watchdog may start counting (the process's start, or the moment the
    services it depends on were back): nothing before it counts against the worker.
    Stuck means: no heartbeat at all for ``stall_seconds`` (the event loop is blocked or the
    process frozen), or work waiting (lag > 0) and no progress for ``stall_seconds``.
    """
    if beat is None or beat.pid != pid:
        quiet = now - since
        return f"no heartbeat in {quiet:.0f} s since its start" if quiet > stall_seconds else None
    silent = now - max(beat.written_at, since)
    if silent > stall_seconds:
        return f"no heartbeat for {silent:.0f} s"
    stalled = now - max(beat.progress_at, since)
    if beat.lag > 0 and stalled > stall_seconds:
        return f"{beat.lag} records waiting and no progress for {stalled:.0f} s"
    return None


def describe(beat: Beat | None, now: float, stall_seconds: float) -> dict[str, Any]:
    """A worker's state for /health: ok, stalled (work waiting, no progress), retrying (a partition's
    batches keep failing: ``failing_partitions`` counts them) or down (no heartbeat)."""
    if beat is None:
        return {"status": "unknown"}
    heartbeat_age = now - beat.written_at
    progress_age = now - beat.progress_at
    # A partition whose batch keeps failing is stuck even while the others progress (and hide it from
    # ``progress_at``): a projection retried one event for ever and /health said "ok".
    failing = {p: n for p, n in beat.failing.items() if n >= FAILING_BATCHES}
    if heartbeat_age > max(5 * INTERVAL, 5.0):
        status = "down"
    elif beat.lag > 0 and progress_age > stall_seconds:
        status = "stalled"
    elif failing:
        status = "retrying"
    else:
        status = "ok"
    return {
        "status": status,
        **({"failing_partitions": failing} if failing else {}),
        "lag": beat.lag,
        "last_progress_seconds_ago": round(max(0.0, progress_age), 1),
        "last_heartbeat_seconds_ago": round(max(0.0, heartbeat_age), 1),
        "dead_letters_since_start": beat.dead_letters,
    }
