"""Live-path benchmark: many WebSocket subscribers while data is ingested at a steady rate; prints JSON.

Opens ``--subscribers`` connections to ``/ws`` (at most ``--connect-concurrency`` handshakes at a
time), each subscribed to ``data_changes``, then ingests ``--rate`` objects per second for
``--duration`` seconds. Figures: delivery latency from commit (the projection applying the
``DataObject.Ingested`` event: ``audit_log.recorded_at``) to each client receiving it, p50/p99/max
over every (subscriber, object) pair; messages dropped (expected - received, and what the server
reported as ``lagged``); the ingest rate achieved; the API's resident memory (VmRSS before and
after, peak VmHWM). Loopback only.

The system must let one user hold that many connections and send that many messages, e.g.:

    PIPELINE_WEBSOCKET_MAX_CONNECTIONS_PER_USER=2000 PIPELINE_WEBSOCKET_MESSAGE_LIMIT="100000 per minute" \\
    PIPELINE_RATE_LIMITING_ENABLED=false make run
    python bench/live.py --subscribers 1000 --rate 200 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import websockets

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from running import add_system_arguments, log_in, memory_kb  # noqa: E402  (what the benchmarks share)


class Subscriber:
    received_total = 0  # across all subscribers: the drain loop watches one number, not every set

    def __init__(self) -> None:
        self.received: dict[str, float] = {}  # object id -> wall-clock time it arrived
        self.lagged = 0


async def subscribe(url: str, gate: asyncio.Semaphore, ready: list[Any]) -> Subscriber:
    sub = Subscriber()
    async with gate:
        ws = await websockets.connect(url, max_queue=None, ping_interval=None)
        await ws.send(json.dumps({"type": "subscribe", "topic": "data_changes"}))
        while json.loads(await ws.recv()).get("type") != "subscribed":
            pass
    ready.append((ws, sub))
    return sub


async def listen(ws: Any, sub: Subscriber) -> None:
    try:
        async for raw in ws:
            message = orjson.loads(raw)
            if message.get("type") == "data_change" and message.get("change_type") == "Ingested":
                sub.received[message["object_id"]] = time.time()
                Subscriber.received_total += 1
            elif message.get("type") == "lagged":
                sub.lagged += int(message["dropped"])
    except websockets.ConnectionClosed:
        pass


async def drive_ingest(api: str, token: str, rate: int, seconds: int) -> tuple[list[str], dict[str, int]]:
    """Ingest at ``rate`` per second for ``seconds``; returns the created object ids and failures by kind."""
    created: list[str] = []
    failures: dict[str, int] = {}
    limits = httpx.Limits(max_connections=64)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=api, headers=headers, timeout=30, limits=limits) as client:

        async def one(n: int) -> None:
            body = {"content": f"live bench object {n}", "content_type": "text/plain", "metadata": {"bench": "live"}}
            try:
                response = await client.post("/api/v1/ingest", json=body)
            except httpx.HTTPError as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                return
            if response.status_code == 201:
                created.append(response.json()["object_id"])
            else:
                failures[str(response.status_code)] = failures.get(str(response.status_code), 0) + 1

        started = time.monotonic()
        tasks = []
        for n in range(rate * seconds):
            delay = started + n / rate - time.monotonic()  # a steady schedule, not a closed loop
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
    return created, failures


def commit_times(database_url: str, schema: str, object_ids: list[str]) -> dict[str, float]:
    """When the projection applied each object's Ingested event (epoch seconds)."""
    with psycopg.connect(database_url, options=f"-c search_path={schema}") as conn:
        rows = conn.execute(
            "SELECT aggregate_id::text, extract(epoch FROM recorded_at) FROM audit_log"
            " WHERE aggregate_id = ANY(%s::uuid[]) AND aggregate_version = 1",
            (object_ids,),
        ).fetchall()
    return {object_id: float(at) for object_id, at in rows}


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def run(args: argparse.Namespace, runtime: dict[str, Any]) -> dict[str, Any]:
    api = runtime["api"]
    token = log_in(api, args.username, args.password)
    api_pid = runtime["pids"]["api"]
    rss_before = memory_kb(api_pid)
    gate = asyncio.Semaphore(args.connect_concurrency)
    ready: list[Any] = []
    ws_base = api.replace("http://", "ws://")
    connect_started = time.monotonic()
    subscribers = await asyncio.gather(
        *(subscribe(f"{ws_base}/ws/bench-{n}?access_token={token}", gate, ready) for n in range(args.subscribers))
    )
    connect_s = time.monotonic() - connect_started
    listeners = [asyncio.create_task(listen(ws, sub)) for ws, sub in ready]
    print(f"{len(ready)} subscribers in {connect_s:.1f}s; ingesting...", file=sys.stderr)
    ingest_started = time.monotonic()
    created, failures = await drive_ingest(api, token, args.rate, args.duration)
    ingest_s = time.monotonic() - ingest_started
    wanted = set(created)
    deadline = time.monotonic() + args.drain
    # Every subscriber sees every ingest (the admin sees all); stop when all have come, or at the drain bound.
    while time.monotonic() < deadline and Subscriber.received_total < len(created) * len(subscribers):
        await asyncio.sleep(0.2)  # a benchmark, not a test: the drain bound is the measurement's own
    rss_after = memory_kb(api_pid)
    for ws, _ in ready:
        await ws.close()
    for task in listeners:
        task.cancel()
    committed = commit_times(runtime["database_url"], runtime["schema"], created)
    latencies = [
        (sub.received[oid] - committed[oid]) * 1000
        for sub in subscribers
        for oid in created
        if oid in sub.received and oid in committed
    ]
    expected = len(created) * len(subscribers)
    received = sum(len(wanted & sub.received.keys()) for sub in subscribers)
    return {
        "benchmark": "live",
        "subscribers": len(subscribers),
        "connect_s": round(connect_s, 2),
        "target_ingests_per_s": args.rate,
        "ingests": len(created),
        "ingest_failures": failures,
        "ingest_s": round(ingest_s, 1),
        "ingests_per_s": round(len(created) / ingest_s, 1),
        "deliveries_expected": expected,
        "deliveries_received": received,
        "not_received_within_drain": expected - received,
        "drain_s": args.drain,
        "lagged_reported": sum(sub.lagged for sub in subscribers),
        "delivery_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p99": round(percentile(latencies, 99), 1),
            "max": round(max(latencies, default=0.0), 1),
        },
        "api_rss_mb": {
            "before": round(rss_before["VmRSS"] / 1024, 1),
            "after": round(rss_after["VmRSS"] / 1024, 1),
            "peak": round(rss_after["VmHWM"] / 1024, 1),
        },
        "cores": os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--subscribers", type=int, default=1000, help="/ws connections following data_changes (default 1000)"
    )
    parser.add_argument("--connect-concurrency", type=int, default=50, help="handshakes at a time (default 50)")
    parser.add_argument("--rate", type=int, default=200, help="ingests per second (default 200)")
    parser.add_argument("--duration", type=int, default=20, help="seconds of ingest (default 20)")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for the last deliveries")
    add_system_arguments(parser)  # --data-dir, --username (an admin: it ingests and subscribes), --password
    args = parser.parse_args()
    runtime_file = args.data_dir / "runtime.json"
    if not runtime_file.exists():
        sys.exit(f"no running system found ({runtime_file} is missing): start it with `make run`")
    result = asyncio.run(run(args, json.loads(runtime_file.read_text())))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
