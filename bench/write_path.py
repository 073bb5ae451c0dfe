"""Where an ingest's time goes between the API and the outcome, from the records' own timestamps.

Every record carries the time its producer stamped it (CreateTime): the API stamps the command,
the processor the event (when its batch ran that command) and the outcome (once the batch has run,
with the event's predicted offset; after the events' produce round trip when the offsets are not
predicted, see commands/processor.py ``_EventOffsets``). So, per command of a measured window:

- ``command_to_event``: the command waiting in the log and in the processor (the partition's
  previous transaction, the group commit's linger) and its batch running up to it;
- ``event_to_outcome``: the rest of its batch (and the events' round trip when not predicted).

What follows the outcome's stamp (the produce round trip, the commit, the API's outcome reader
seeing it) is the API's command round trip (its metrics) minus these two, by the means;
and what the API spends around the round trip (HTTP, authentication, the limiter, encoding) is its
request duration minus the round trip.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from statistics import mean
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from running import percentiles

from infra.adapters.kafka import topic_partitions


class _CommandId(msgspec.Struct):
    command_id: str


async def _stamps(bootstrap: str, topic: str, since_ms: int, until_ms: int, key: Any) -> dict[str, int]:
    """command id -> the first record's timestamp, for records of ``topic`` stamped in the window."""
    partitions = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        starts = await consumer.offsets_for_times({tp: since_ms for tp in partitions})
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            found = starts.get(tp)
            consumer.seek(tp, found.offset if found is not None else ends[tp])
        stamps: dict[str, int] = {}
        while True:
            positions = {tp: await consumer.position(tp) for tp in partitions}
            if all(positions[tp] >= ends[tp] for tp in partitions):
                return stamps
            for records in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
                for record in records:
                    if record.timestamp <= until_ms:
                        stamps.setdefault(key(record), record.timestamp)
    finally:
        await consumer.stop()


def _header(name: str) -> Any:
    def value(record: Any) -> str:
        return next((v.decode() for k, v in record.headers if k == name), "")

    return value


INGEST_METRICS = {
    "http": r'pipeline_http_request_duration_seconds_(sum|count)\{method="POST",route="/api/v1/ingest"\} (\S+)',
    "round_trip": r'pipeline_command_roundtrip_seconds_(sum|count)\{type="IngestData"\} (\S+)',
}
# The processor's counters (its heartbeat, shown by the API): per transaction, what it held and where its time went.
PROCESSOR_METRICS = {
    "batches": r"^pipeline_processor_(batches)_total (\S+)",
    "records": r"^pipeline_processor_batch_(records)_total (\S+)",
    "phases": r'pipeline_processor_transaction_phase_seconds_total\{phase="(\w+)"\} (\S+)',
}


def ingest_metrics(api: str) -> dict[str, dict[str, float]]:
    """Sums and counts of the API's ingest request durations and command round trips (seconds)."""
    with urllib.request.urlopen(f"{api}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        name: {kind: float(value) for kind, value in re.findall(pattern, text, re.MULTILINE)}
        for name, pattern in {**INGEST_METRICS, **PROCESSOR_METRICS}.items()
    }


def metric_means(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean ms of each metric between two readings."""
    means = {}
    for name in INGEST_METRICS:
        count = after[name].get("count", 0) - before[name].get("count", 0)
        total = after[name].get("sum", 0) - before[name].get("sum", 0)
        means[name] = round(total * 1000 / count, 2) if count else 0.0
    batches = after["batches"].get("batches", 0) - before["batches"].get("batches", 0)
    if batches:
        means["records_per_transaction"] = round(
            (after["records"].get("records", 0) - before["records"].get("records", 0)) / batches, 1
        )
        for phase, seconds in after["phases"].items():
            means[f"transaction_{phase}"] = round((seconds - before["phases"].get(phase, 0)) * 1000 / batches, 2)
    return means


def breakdown(
    bootstrap: str, prefix: str, since_ms: int, until_ms: int, means: dict[str, float] | None = None
) -> dict[str, Any]:
    """Percentiles (ms) of the two stretches above for the commands the API stamped in the window."""

    async def collect() -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        def command_id(record: Any) -> str:
            return msgspec.json.decode(record.value, type=_CommandId).command_id

        commands = await _stamps(bootstrap, f"{prefix}.commands", since_ms, until_ms, command_id)
        events = await _stamps(bootstrap, f"{prefix}.events", since_ms, until_ms + 60_000, _header("command_id"))
        outcomes = await _stamps(bootstrap, f"{prefix}.outcomes", since_ms, until_ms + 60_000, lambda r: r.key.decode())
        return commands, events, outcomes

    commands, events, outcomes = asyncio.run(collect())
    matched = [c for c in commands if c in events and c in outcomes]
    to_event = [float(events[c] - commands[c]) for c in matched]
    to_outcome = [float(outcomes[c] - events[c]) for c in matched]
    figures: dict[str, Any] = {
        "commands": len(matched),
        "command_to_event_ms": {**percentiles(to_event), "mean": round(mean(to_event or [0]), 2)},
        "event_to_outcome_ms": {**percentiles(to_outcome), "mean": round(mean(to_outcome or [0]), 2)},
    }
    if means:
        stamped = figures["command_to_event_ms"]["mean"] + figures["event_to_outcome_ms"]["mean"]
        figures["mean_ms"] = {
            "api_request": means["http"],
            "api_around_round_trip": round(means["http"] - means["round_trip"], 2),
            "command_round_trip": means["round_trip"],
            "after_outcome_stamp": round(means["round_trip"] - stamped, 2),
        }
        figures["processor_per_transaction"] = {
            key.removeprefix("transaction_") + ("" if key == "records_per_transaction" else "_ms"): value
            for key, value in means.items()
            if key.startswith(("transaction_", "records_"))
        }
    return figures
