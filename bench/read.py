"""Read benchmark: reads by id of a running system (`make run`) with wrk, beside the read peer; prints JSON.

First it ingests ``--objects`` objects through the API (every ``--annotated-every``-th with two
initial annotations) and submits ``--executions`` graph executions, then reads each object once with
its consistency token (so every read below finds its row). Then, at each of ``--connections``
(default 64 and 1), wrk drives for ``--duration`` seconds, round-robin over the ids:

- ``rest``: ``GET /api/v1/data/{id}`` (the object with its annotations);
- ``rest_token``: the same with the object's own consistency token, already reached;
- ``graphql``: ``dataObject(objectId)`` with objectId, contentType, contentHash, metadata, createdAt;
- ``graphql_annotations``: the same plus ``annotations { annotationType content }``;
- ``execution``: ``GET /api/v1/executions/{id}``.

Each with req/s, p50/p99 latency and the CPU milliseconds per request of the API's processes and of
PostgreSQL's (from /proc). In the same sitting it runs the read peer (``../shared/peers/run_read_peer.sh``,
FastAPI + strawberry, one SELECT per read) against the same PostgreSQL at the same connection counts and
reports our req/s over the peer's (REST and GraphQL; ``graphql_annotations`` is compared with the
peer's GraphQL without annotations, which the peer does not have).

    python bench/read.py --objects 1000 --duration 10

Authentication is on (it logs in as PIPELINE_ADMIN_USERNAME/PIPELINE_ADMIN_PASSWORD) and so is rate
limiting: start the system with the limits raised (README, "Tests and benchmarks"); the JSON names the
limit the API reported, and any 429 shows up in "non2xx".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from execute import GRAPH, TEXT  # noqa: E402
from running import add_system_arguments, cpu_seconds_by_tree, machine_cpu, run_wrk, system_and_token  # noqa: E402

MODES = ("rest", "rest_token", "graphql", "graphql_annotations", "execution")
PEER_OF = {
    "rest": "read_rest",
    "rest_token": "read_rest",
    "graphql": "read_graphql",
    "graphql_annotations": "read_graphql",
}


def peer_script() -> Path | None:
    """../shared/peers/run_read_peer.sh from the checkout (or a worktree beside it), if there."""
    for parent in HERE.parents:
        candidate = parent / "shared" / "peers" / "run_read_peer.sh"
        if candidate.exists():
            return candidate
    return None


async def populate(url: str, token: str, objects: int, annotated_every: int, executions: int) -> dict[str, Any]:
    """Ingest the objects and submit the executions through the API; read each object back with its token."""
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as http:
        gate = asyncio.Semaphore(16)

        async def ingest(n: int) -> tuple[str, str]:
            body: dict[str, Any] = {
                "content": f"Object {n} of the read benchmark. Kafka keeps an ordered log; PostgreSQL serves reads.",
                "content_type": "text/plain",
                "metadata": {"source": "bench-read", "n": n, "topic": ["kafka", "postgres", "reads"][n % 3]},
            }
            if annotated_every and n % annotated_every == 0:
                body["annotations"] = [f"label-{n % 7}", "benchmark"]
            async with gate:
                response = await http.post("/api/v1/ingest", json=body)
            if response.status_code != 201:
                sys.exit(f"ingest answered {response.status_code}: {response.text}")
            created = response.json()
            return created["object_id"], created["position"]

        async def execute() -> tuple[str, str]:
            async with gate:
                response = await http.post("/api/v1/execute", json={"graph": GRAPH, "inputs": {"text": TEXT}})
            if response.status_code != 202:
                sys.exit(f"execute answered {response.status_code}: {response.text}")
            submitted = response.json()
            return submitted["execution_id"], submitted["position"]

        async def read_back(path: str, position: str) -> None:
            async with gate:
                response = await http.get(path, headers={"X-Consistency-Token": position})
            if response.status_code != 200:
                sys.exit(f"GET {path} with its consistency token answered {response.status_code}: {response.text}")

        written = await asyncio.gather(*(ingest(n) for n in range(objects)))
        submitted = await asyncio.gather(*(execute() for _ in range(executions)))
        await asyncio.gather(*(read_back(f"/api/v1/data/{i}", p) for i, p in written))
        await asyncio.gather(*(read_back(f"/api/v1/executions/{i}", p) for i, p in submitted))
        sample = await http.get(f"/api/v1/data/{written[0][0]}")
        limit, remaining = sample.headers.get("ratelimit-limit"), sample.headers.get("ratelimit-remaining")
        # With the limiter off the API still sends the headers, but nothing is counted: remaining == limit.
        limiter = {"limit": limit, "counting": limit is not None and remaining != limit}
        query = "query($id: String!){ dataObject(objectId: $id){ objectId annotations { annotationType } } }"
        answer = (await http.post("/api/graphql", json={"query": query, "variables": {"id": written[0][0]}})).json()
        if answer.get("errors") or not answer["data"]["dataObject"]["annotations"]:
            sys.exit(f"GraphQL read of an annotated object failed: {answer}")
    return {"objects": written, "executions": submitted, "rate_limit": limiter}


def measure(
    url: str, token: str, ids_file: str, mode: str, connections: int, seconds: int, warmup: int, pids: dict[str, int]
) -> dict[str, Any]:
    env = {"IDS_FILE": ids_file, "MODE": mode, "TOKEN": token}
    if warmup:
        run_wrk(url, "read.lua", env, connections, warmup, 2)
    before, machine_before = cpu_seconds_by_tree(pids), machine_cpu()
    load = run_wrk(url, "read.lua", env, connections, seconds, 2)
    after, machine_after = cpu_seconds_by_tree(pids), machine_cpu()
    requests = max(1, int(load["requests"]))
    return {
        "requests_per_s": round(load["requests"] / load["duration_s"], 1),
        "p50_ms": load["p50_ms"],
        "p99_ms": load["p99_ms"],
        "max_ms": load["max_ms"],
        "requests": load["requests"],
        "non2xx": load["non2xx"],
        "socket_errors": load["socket_errors"],
        # CPU milliseconds per request during the measured run: what limits throughput on 2 cores.
        "cpu_ms_per_request": {name: round((after[name] - before[name]) * 1000 / requests, 3) for name in pids},
        # How busy the whole machine was (wrk and other work included): the figures' noise.
        "machine_busy_pct": round(
            100 * (machine_after[0] - machine_before[0]) / max(1e-9, machine_after[1] - machine_before[1]), 1
        ),
    }


def run_peer(script: Path, database_url: str, connections: int, seconds: int) -> dict[str, dict[str, Any]]:
    """The peer's figures per mode (read_rest, read_graphql), from run_read_peer.sh's JSON lines."""
    server = database_url.rsplit("/", 1)[0]  # the peer creates (and drops) a database of its own there
    done = subprocess.run(
        [str(script), str(seconds), str(connections)],
        env={**os.environ, "PEERS_PG": server},
        capture_output=True,
        text=True,
        check=False,
    )
    figures = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            figures[row["peer"]] = {
                "requests_per_s": float(row["rps"]),
                "p99_ms": _milliseconds(row["p99"]),
                "non2xx": int(row["non2xx"]),
            }
    if not figures:
        print(f"the peer did not run: {done.stderr.strip()[-500:]}", file=sys.stderr)
    return figures


def measure_peer_here(
    script: Path, database_url: str, pg_pid: int, connections: list[int], seconds: int, warmup: int
) -> dict[str, dict[str, Any]]:
    """The peer's server started here and driven like ours (same wrk script): figures with its CPU per request.

    run_read_peer.sh gives the peer 10 s to start, which a busy machine may not, and reports no CPU;
    this waits for it and measures it exactly as ``measure`` measures ours.
    """
    python = Path(os.environ.get("PEERS_VENV", Path.home() / ".cache" / "pipeline-peers-venv")) / "bin" / "python"
    if not python.exists():
        print(f"no peer virtualenv at {python} (run_read_peer.sh makes it)", file=sys.stderr)
        return {}
    server, database = database_url.rsplit("/", 1)[0], f"peers_read_bench_{os.getpid()}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        ids = f"{scratch}/ids"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [str(python), "-m", "uvicorn", "--app-dir", str(script.parent), "read_peer:app"]
        peer = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            env={**os.environ, "PEER_DSN": f"{server}/{database}", "PEER_IDS_FILE": ids},
            stderr=subprocess.DEVNULL,  # e.g. a traceback for each connection wrk drops at the end
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180
            while not (Path(ids).exists() and Path(ids).stat().st_size and _answers(f"{url}/docs")):
                if time.monotonic() > deadline or peer.poll() is not None:
                    print("the peer did not start", file=sys.stderr)
                    return {}
                time.sleep(0.5)
            pids = {"peer": peer.pid, "postgres": pg_pid}
            for count in connections:
                for mode in ("rest", "graphql"):
                    result = measure(url, "", ids, mode, count, seconds, warmup, pids)
                    figures.setdefault(str(count), {})[f"read_{mode}"] = result
                    print(f"  peer {mode} {count}: {json.dumps(result)}", file=sys.stderr)
        finally:
            peer.terminate()
            peer.wait(timeout=30)
            with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
                admin.execute(f"DROP DATABASE {database} WITH (FORCE)")
    return figures


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False


def _ratio(ours: dict[str, Any], peer: dict[str, Any] | None, figure: str, invert: bool) -> float | None:
    """Our ``figure`` over the peer's (``invert``: the peer's over ours); None without both.

    ``figure`` "cpu" is the CPU ms per request of the server process (ours "api", the peer's "peer").
    """
    if not peer:
        return None
    if figure == "cpu":
        mine, theirs = ours["cpu_ms_per_request"]["api"], peer["cpu_ms_per_request"]["peer"]
    else:
        mine, theirs = ours[figure], peer[figure]
    if invert:
        mine, theirs = theirs, mine
    return round(mine / theirs, 2) if mine and theirs else None


def _milliseconds(text: str) -> float | None:
    """wrk's latency text ("12.34ms", "1.02s", "850.00us") in ms."""
    match = re.match(r"^([\d.]+)(us|ms|s|m)$", text.strip())
    if match is None:
        return None
    value, unit = float(match.group(1)), match.group(2)
    return round(value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit], 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=1000, help="objects to ingest and read (default 1000)")
    parser.add_argument(
        "--annotated-every", type=int, default=2, help="every n-th object gets two annotations (default 2; 0: none)"
    )
    parser.add_argument("--executions", type=int, default=50, help="executions to submit and read (default 50)")
    parser.add_argument(
        "--connections", type=int, nargs="+", default=[64, 1], help="connection counts to drive (default 64 1)"
    )
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per mode (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured seconds before each (default 2)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="what to drive (default all)")
    parser.add_argument("--no-peer", action="store_true", help="skip the read peer")
    add_system_arguments(parser)
    args = parser.parse_args()
    runtime, token = system_and_token(args)
    url = runtime["api"]
    print(f"ingesting {args.objects} objects and {args.executions} executions...", file=sys.stderr)
    data = asyncio.run(populate(url, token, args.objects, args.annotated_every, args.executions))
    pids = {"api": runtime["pids"]["api"], "postgres": runtime["service_pids"]["postgres"]}
    peer = None if args.no_peer else peer_script()
    with tempfile.TemporaryDirectory() as scratch:
        objects_file, executions_file = f"{scratch}/objects", f"{scratch}/executions"
        Path(objects_file).write_text("".join(f"{i} {p}\n" for i, p in data["objects"]))
        Path(executions_file).write_text("".join(f"{i} {p}\n" for i, p in data["executions"]))
        ours: dict[str, dict[str, Any]] = {}
        peers: dict[str, dict[str, Any]] = {}
        for connections in args.connections:
            ours[str(connections)] = {}
            for mode in args.modes:
                print(f"{mode}, {connections} connections, {args.duration}s...", file=sys.stderr)
                ids = executions_file if mode == "execution" else objects_file
                figures = measure(url, token, ids, mode, connections, args.duration, args.warmup, pids)
                ours[str(connections)][mode] = figures
                print(f"  {json.dumps(figures)}", file=sys.stderr)
            if peer is not None:
                print(f"the read peer, {connections} connections...", file=sys.stderr)
                peers[str(connections)] = run_peer(peer, runtime["database_url"], connections, args.duration)
                print(f"  {json.dumps(peers[str(connections)])}", file=sys.stderr)
    here: dict[str, dict[str, Any]] = {}
    if peer is not None:
        print("the read peer's server, driven and measured here...", file=sys.stderr)
        here = measure_peer_here(
            peer, runtime["database_url"], pids["postgres"], args.connections, args.duration, args.warmup
        )

    def ratios(peer_figures: dict[str, dict[str, Any]], figure: str, invert: bool = False) -> dict[str, Any]:
        return {
            connections: {
                mode: _ratio(figures, peer_figures.get(connections, {}).get(PEER_OF.get(mode, "")), figure, invert)
                for mode, figures in modes.items()
            }
            for connections, modes in ours.items()
        }

    result = {
        "benchmark": "read",
        "objects": args.objects,
        "annotated_objects": len(range(0, args.objects, args.annotated_every)) if args.annotated_every else 0,
        "executions": args.executions,
        "duration_s": args.duration,
        "rate_limiting": data["rate_limit"],  # the limit the API answered, and whether it counts requests
        "ours": ours,
        "peer": peers,  # run_read_peer.sh's figures
        "ratio_to_peer": ratios(peers, "requests_per_s"),  # our req/s over the peer's, same connections, same sitting
        "peer_measured_here": here,  # the peer's server driven by read.lua like ours, with its CPU per request
        "ratio_to_peer_measured_here": ratios(here, "requests_per_s"),
        # the peer's API CPU per request over ours (> 1: we are cheaper), what decides throughput on a busy machine
        "cpu_ratio_to_peer_measured_here": ratios(here, "cpu", invert=True),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
