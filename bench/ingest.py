"""Ingest benchmark: drives POST /api/v1/ingest of a running system (`make run`) with wrk, prints JSON.

Figures: requests/s and latency percentiles (request -> outcome, i.e. events durable in Kafka),
projection lag (event created -> applied in PostgreSQL, from audit_log), peak RSS (VmHWM) of the
API and each worker, and the core count. The request body is the one of ../shared/peers/ingest.lua
when that file is there, so the figures compare with the peers' (run_peers.sh) in the same sitting.

    python bench/ingest.py --connections 64 --duration 10

Rate limits apply to the benchmark's user too (ingest: 100/min by default): for throughput figures
start the system with PIPELINE_RATE_LIMITING_ENABLED=false; any 429 shows up in "non2xx".
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import write_path  # noqa: E402
from running import (  # noqa: E402
    add_system_arguments,
    cpu_seconds_by_tree,
    memory_kb,
    percentiles,
    run_wrk,
    system_and_token,
)

PEER_BODY = HERE.parent.parent / "shared" / "peers" / "ingest.lua"
DEFAULT_BODY = (
    '{"content": "The quick brown fox jumps over the lazy dog. Kafka keeps an ordered log.",'
    ' "content_type": "text/plain", "metadata": {"source": "bench", "n": 1}}'
)


def request_body() -> str:
    if PEER_BODY.exists():
        match = re.search(r"wrk\.body\s*=\s*'(.*)'", PEER_BODY.read_text())
        if match:
            return match.group(1)
    return DEFAULT_BODY


def run_ingest_wrk(
    url: str, body_file: str, connections: int, seconds: int, threads: int, token: str
) -> dict[str, float]:
    env = {"BODY_FILE": body_file, "ACCESS_TOKEN": token}
    return run_wrk(f"{url}/api/v1/ingest", "wrk_json.lua", env, connections, seconds, threads)


def read_your_writes(url: str, body: str, token: str, rounds: int) -> dict[str, Any]:
    """One connection: ingest, then read the object back with its consistency token, ``rounds`` times.

    Latency percentiles (ms) of the ingest, of the read (which waits until the projection has the
    object) and of the two together: what a client that reads its own write waits.
    """
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    writes: list[float] = []
    reads: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter()
        connection.request("POST", "/api/v1/ingest", body=body, headers=headers)
        response = connection.getresponse()
        created = json.loads(response.read())
        written = time.perf_counter()
        if response.status != 201:
            sys.exit(f"ingest answered {response.status}: {created}")
        read_headers = {**headers, "X-Consistency-Token": created["position"]}
        connection.request("GET", f"/api/v1/data/{created['object_id']}", headers=read_headers)
        read = connection.getresponse()
        read.read()
        if read.status != 200:
            sys.exit(f"read with the consistency token answered {read.status}")
        writes.append((written - started) * 1000)
        reads.append((time.perf_counter() - written) * 1000)
    connection.close()
    totals = [w + r for w, r in zip(writes, reads, strict=True)]
    figures = {"ingest_ms": writes, "read_ms": reads, "total_ms": totals}
    return {"rounds": rounds, **{name: percentiles(values) for name, values in figures.items()}}


def projection_lag(
    database_url: str, schema: str, since: datetime, expected: int, wait: float = 60.0
) -> dict[str, float]:
    """Lag percentiles (ms) of events created since ``since``, once all ``expected`` are applied."""
    with psycopg.connect(database_url, options=f"-c search_path={schema}") as conn:
        deadline = time.monotonic() + wait
        count = 0
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM audit_log WHERE occurred_at >= %s", (since,)).fetchone()
            count = row[0] if row else 0
            if count >= expected:
                break
            time.sleep(0.5)
        row = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag),"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY lag),"
            " max(lag) FROM (SELECT extract(epoch FROM recorded_at - occurred_at) * 1000 AS lag FROM audit_log"
            " WHERE occurred_at >= %s) AS lags",
            (since,),
        ).fetchone()
    assert row is not None
    return {
        "applied": count,
        "lag_p50_ms": round(float(row[0] or 0), 2),
        "lag_p99_ms": round(float(row[1] or 0), 2),
        "lag_max_ms": round(float(row[2] or 0), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections (default 64)")
    parser.add_argument("--duration", type=int, default=10, help="measured seconds (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured seconds first (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--read-rounds",
        type=int,
        default=200,
        help="then, on one connection, ingest and read back with the consistency token this many times (default 200)",
    )
    add_system_arguments(parser)
    args = parser.parse_args()
    runtime, token = system_and_token(args)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as body:
        body.write(request_body())
    print(f"warming up for {args.warmup}s...", file=sys.stderr)
    run_ingest_wrk(runtime["api"], body.name, args.connections, args.warmup, args.threads, token)
    since = datetime.now(UTC)
    since_ms = int(time.time() * 1000)
    print(f"measuring for {args.duration}s with {args.connections} connections...", file=sys.stderr)
    processes = {**runtime["pids"], **runtime.get("service_pids", {})}
    metrics_before = write_path.ingest_metrics(runtime["api"])
    cpu_before = cpu_seconds_by_tree(processes)
    load = run_ingest_wrk(runtime["api"], body.name, args.connections, args.duration, args.threads, token)
    cpu_after = cpu_seconds_by_tree(processes)
    until_ms = int(time.time() * 1000)
    metric_means = write_path.metric_means(metrics_before, write_path.ingest_metrics(runtime["api"]))
    print("waiting for the projection to apply everything...", file=sys.stderr)
    lag = projection_lag(runtime["database_url"], runtime["schema"], since, int(load["requests"] - load["non2xx"]))
    Path(body.name).unlink()
    stretches = write_path.breakdown(
        runtime["kafka_bootstrap_servers"], runtime["topic_prefix"], since_ms, until_ms, metric_means
    )
    print(f"ingest then read with the token, {args.read_rounds} times on one connection...", file=sys.stderr)
    consistent_read = (
        read_your_writes(runtime["api"], request_body(), token, args.read_rounds) if args.read_rounds else None
    )
    memory = {name: memory_kb(pid) for name, pid in runtime["pids"].items()}
    result = {
        "benchmark": "ingest",
        "connections": args.connections,
        "duration_s": load["duration_s"],
        "requests": load["requests"],
        "non2xx": load["non2xx"],
        "socket_errors": load["socket_errors"],
        "commands_per_s": round(load["requests"] / load["duration_s"], 1),
        "latency_ms": {k: load[f"{k}_ms"] for k in ("p50", "p95", "p99", "max")},
        "projection": lag,
        "write_path": stretches,
        "read_your_writes_1_connection": consistent_read,
        "peak_rss_mb": {name: round(m["VmHWM"] / 1024, 1) for name, m in memory.items()},
        "rss_mb": {name: round(m["VmRSS"] / 1024, 1) for name, m in memory.items()},
        # CPU milliseconds each part spent per request during the measured run: what limits throughput.
        "cpu_ms_per_request": {
            name: round((cpu_after[name] - cpu_before[name]) * 1000 / max(1, load["requests"]), 3) for name in processes
        },
        "cores": os.cpu_count(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
