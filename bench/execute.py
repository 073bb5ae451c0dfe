"""Execution benchmark: N concurrent submitters run a small graph to completion; prints JSON.

Figures: executions/s (completed executions over the wall time) and time-to-completion percentiles
(POST /api/v1/execute -> its "completed": with --wait ws, the default, the execution_update that says so
on the submitter's /ws connection, subscribed to execution:{id} after the submit, as a client following
its runs would; with --wait poll, GET /api/v1/executions/{id} every 20 ms, whose requests cost the API
more CPU than the execution itself on a saturated machine). Against a running system with
--url or --data-dir (its runtime.json; then also the CPU milliseconds each process spent per execution),
or, without either, against one it starts itself (Kafka, PostgreSQL, Redis, the API and the processor,
projections and executor workers) in a temporary directory.

    python bench/execute.py --submitters 8 --executions 200 [--url http://127.0.0.1:8000 | --data-dir .data]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import websockets

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))  # infra.runtime.progress, whether or not the project is installed
from running import cpu_seconds_by_tree, machine_cpu, running_system  # noqa: E402

from infra.runtime.progress import Progress  # noqa: E402

BENCH_ADMIN = ("bench-admin", "bench-admin-password-1")
TEXT = "Kafka keeps an ordered log. Consumers read it in order. The executor runs graphs of nodes over text. " * 5
GRAPH: dict[str, list[dict[str, Any]]] = {
    "nodes": [
        {"id": "src", "type": "input", "params": {"name": "text"}},
        {"id": "norm", "type": "normalize"},
        {"id": "chunks", "type": "chunk", "params": {"size": 120, "overlap": 20}},
        {"id": "kw", "type": "keywords", "params": {"top_k": 5}},
        {"id": "count", "type": "word_count"},
    ],
    "edges": [
        {"from": "src.value", "to": "norm.text"},
        {"from": "norm.text", "to": "chunks.text"},
        {"from": "chunks.chunks", "to": "kw.text"},
        {"from": "norm.text", "to": "count.text"},
    ],
}


# Where an execution's time goes, from the audit log (the processor's event times, the projection's apply
# times) of the executions submitted since the bench started (its warm-up too): percentiles in ms, and the commands
# that recorded events per execution (ExecuteGraph and the executor's).
STAGES_SQL = """
WITH runs AS (
  SELECT
    min(occurred_at) FILTER (WHERE event_type = 'Execution.Submitted') AS submitted,
    min(occurred_at) FILTER (WHERE event_type = 'Execution.NodeStarted') AS first_node,
    min(occurred_at) FILTER (WHERE event_type = 'Execution.Completed') AS completed,
    min(recorded_at) FILTER (WHERE event_type = 'Execution.Completed') AS applied,
    count(DISTINCT command_id) AS commands
  FROM audit_log WHERE event_type LIKE 'Execution.%%' AND occurred_at >= %(since)s GROUP BY aggregate_id
), stages AS (
  SELECT extract(epoch FROM first_node - submitted) * 1000 AS submitted_to_first_node,
         extract(epoch FROM completed - first_node) * 1000 AS first_node_to_completed,
         extract(epoch FROM applied - completed) * 1000 AS completed_to_read_model,
         commands
  FROM runs WHERE submitted IS NOT NULL AND applied IS NOT NULL
)
SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY submitted_to_first_node),
       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY first_node_to_completed),
       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY completed_to_read_model),
       avg(commands)
FROM stages
"""


def stages(runtime: dict[str, Any], since: datetime) -> dict[str, Any]:
    """Submitted -> first node event (the ExecuteGraph transaction, the executor's pick-up and nodes,
    the wait for the transaction that records them) -> Completed -> applied by the projection."""
    options = f"-c search_path={runtime['schema']}"
    with psycopg.connect(runtime["database_url"], options=options) as conn:
        row = conn.execute(STAGES_SQL, {"since": since}).fetchone()
    assert row is not None
    names = ("submitted_to_first_node", "first_node_to_completed", "completed_to_read_model")
    figures: dict[str, Any] = {
        f"{name}_ms": {"p50": round(pair[0], 1), "p99": round(pair[1], 1)}
        for name, pair in zip(names, row[:3], strict=True)
        if pair is not None
    }
    figures["commands_per_execution"] = round(float(row[3] or 0), 2)
    return figures


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


TERMINAL = {"completed", "failed", "cancelled"}


async def submit_graph(http: httpx.AsyncClient) -> dict[str, Any]:
    """POST the bench's graph; the answer (execution id, position)."""
    response = await http.post("/api/v1/execute", json={"graph": GRAPH, "inputs": {"text": TEXT}})
    response.raise_for_status()
    submitted: dict[str, Any] = response.json()
    return submitted


async def one(http: httpx.AsyncClient) -> float:
    """Submit, then GET its status every 20 ms until it finished."""
    started = time.perf_counter()
    execution_id = (await submit_graph(http))["execution_id"]
    while True:
        status = await http.get(f"/api/v1/executions/{execution_id}")
        if status.status_code == 200 and status.json()["status"] in TERMINAL:
            assert status.json()["status"] == "completed", status.text
            return time.perf_counter() - started
        await asyncio.sleep(0.02)


FOLLOWER_CONNECTIONS = 8  # /ws connections shared by the submitters (the default per-user cap is 20)


class Follower:
    """One /ws connection following the executions of several submitters (a user may hold at most
    websocket.max_connections_per_user WebSockets): each waits for the execution_update that says its
    execution finished."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if message.get("type") == "error":  # e.g. a limit: it names no execution, so every wait fails
                hint = " (raise websocket.message_limit, PIPELINE_WEBSOCKET_MESSAGE_LIMIT, or --wait poll)"
                limited = message.get("code") == "rate_limited"
                for future in self.waiting.values():
                    if not future.done():
                        future.set_exception(RuntimeError(f"/ws refused: {message}{hint if limited else ''}"))
            if message.get("type") != "execution_update":
                continue  # subscribed, unsubscribed, notifications
            waiting = self.waiting.get(message.get("execution_id", ""))
            if waiting is not None and not waiting.done() and message["data"]["status"] in TERMINAL:
                waiting.set_result(message)

    async def finished(self, execution_id: str, position: str | None) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[execution_id] = future
        topic = f"execution:{execution_id}"
        subscribe = {"type": "subscribe", "topic": topic}
        if position:
            subscribe["after"] = position  # the submit's token: the first update already has it
        await self.ws.send(json.dumps(subscribe))
        try:
            return await asyncio.wait_for(future, 60)
        finally:
            del self.waiting[execution_id]
            await self.ws.send(json.dumps({"type": "unsubscribe", "topic": topic}))


async def one_followed(http: httpx.AsyncClient, follower: Follower) -> float:
    """Submit, then wait for the execution_update that says it finished."""
    started = time.perf_counter()
    submitted = await submit_graph(http)
    update = await follower.finished(submitted["execution_id"], submitted.get("position"))
    assert update["data"]["status"] == "completed", update
    return time.perf_counter() - started


def ws_url(http: httpx.AsyncClient, client_id: str) -> str:
    token = http.headers["Authorization"].removeprefix("Bearer ")
    return str(http.base_url).replace("http://", "ws://").rstrip("/") + f"/ws/{client_id}?access_token={token}"


async def log_in(http: httpx.AsyncClient, username: str, password: str) -> None:
    """Authenticate the client; the first-start admin may take a moment to exist."""
    deadline = time.monotonic() + 60
    while True:
        response = await http.post("/api/v1/auth/login", json={"username": username, "password": password})
        if response.status_code == 200:
            http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
            return
        if time.monotonic() > deadline:
            sys.exit(f"login as {username!r} failed: {response.text}")
        await asyncio.sleep(0.5)


async def drive(
    url: str,
    submitters: int,
    executions: int,
    username: str,
    password: str,
    processes: dict[str, int] | None = None,
    wait: str = "ws",
) -> dict[str, Any]:
    """Run the executions; with ``processes`` (name -> pid), also each one's CPU per execution."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        await log_in(http, username, password)
        await one(http)  # warm-up: topics, consumer groups, connections
        queue = list(range(executions))
        times: list[float] = []
        bar = Progress(executions, "executions", unit="executions")  # on stderr; stdout is the JSON

        async def submitter(follower: Follower | None) -> None:
            while queue:
                queue.pop()
                times.append(await (one(http) if follower is None else one_followed(http, follower)))
                bar.track(len(times), executions)

        async with contextlib.AsyncExitStack() as stack:
            followers: list[Follower | None] = [None]
            if wait == "ws":
                followers = []
                for number in range(min(submitters, FOLLOWER_CONNECTIONS)):
                    try:
                        ws = await stack.enter_async_context(
                            websockets.connect(ws_url(http, f"bench-execute-{number}"), max_queue=None)
                        )
                    except websockets.InvalidStatus as refused:  # e.g. 429: the per-user cap on connections
                        body = bytes(refused.response.body or b"").decode(errors="replace")
                        raise SystemExit(
                            f"error: /ws refused follower {number + 1}: {refused.response.status_code} {body}; allow"
                            " more (websocket.max_connections_per_user) or use --wait poll"
                        ) from None
                    follower = Follower(ws)
                    followers.append(follower)
                    reader = asyncio.create_task(follower.read())
                    stack.callback(reader.cancel)

            cpu_before = cpu_seconds_by_tree(processes or {})
            busy_before = machine_cpu()
            started = time.perf_counter()
            await asyncio.gather(*(submitter(followers[number % len(followers)]) for number in range(submitters)))
            wall = time.perf_counter() - started
            cpu_after = cpu_seconds_by_tree(processes or {})
            busy_after = machine_cpu()
    figures: dict[str, Any] = {
        "submitters": submitters,
        "executions": executions,
        "nodes_per_execution": len(GRAPH["nodes"]),
        "wait": wait,
        "executions_per_s": round(executions / wall, 2),
        "ttc_p50_ms": round(percentile(times, 50) * 1000, 1),
        "ttc_p99_ms": round(percentile(times, 99) * 1000, 1),
        "ttc_max_ms": round(max(times) * 1000, 1),
        "cores": os.cpu_count() or 0,
        # How busy the whole machine was meanwhile (every process, this system's or not): 1.0 = all cores.
        "machine_busy": round((busy_after[0] - busy_before[0]) / max(1e-9, busy_after[1] - busy_before[1]), 2),
    }
    if processes:
        # CPU milliseconds each part spent per execution during the measured run: what limits throughput.
        figures["cpu_ms_per_execution"] = {
            name: round((cpu_after[name] - cpu_before[name]) * 1000 / executions, 2) for name in processes
        }
    return figures


@contextlib.contextmanager
def own_system() -> Iterator[str]:
    """Services plus the API and every worker, in a temporary directory; yields the API's URL."""
    sys.path.insert(0, str(ROOT))
    from infra.provision.services import ManagedServices

    with tempfile.TemporaryDirectory(prefix="bench-execute-") as tmp, ManagedServices(Path(tmp) / "services") as ms:
        endpoints = ms.start()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {
            **os.environ,
            "DATABASE_URL": endpoints.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka_bootstrap,
            "REDIS_URL": endpoints.redis_url,
            "PIPELINE_DATA_DIR": str(Path(tmp) / "data"),
            "PIPELINE_PORT": str(port),
            "SECRET_KEY": "bench-" + "x" * 40,
            "PIPELINE_ADMIN_USERNAME": BENCH_ADMIN[0],
            "PIPELINE_ADMIN_PASSWORD": BENCH_ADMIN[1],
            "PIPELINE_RATE_LIMITING_ENABLED": "false",  # measure the pipeline, not the limiter
        }
        children = []
        for args in (["worker", "processor"], ["worker", "projections"], ["worker", "executor"], ["api"]):
            log = (Path(tmp) / f"{args[-1]}.log").open("ab")
            children.append(
                subprocess.Popen([sys.executable, "-m", "infra.cli", *args], env=env, cwd=ROOT, stdout=log, stderr=log)
            )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                time.sleep(0.2)
            yield url
        finally:
            for child in children:
                child.terminate()
            for child in children:
                child.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running system's API (default: start one)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="a running system's data directory (its runtime.json names the API and the processes to measure)",
    )
    parser.add_argument("--submitters", type=int, default=8, help="concurrent submitters (default 8)")
    parser.add_argument("--executions", type=int, default=200, help="executions in all (default 200)")
    parser.add_argument(
        "--wait",
        choices=("ws", "poll"),
        default="ws",
        help="how a submitter learns its execution finished: /ws execution_update (default) or GET every 20 ms",
    )
    parser.add_argument(
        "--username",
        default=os.environ.get("PIPELINE_ADMIN_USERNAME", "admin"),
        help="with --url or --data-dir: who submits (default: PIPELINE_ADMIN_USERNAME or admin)",
    )
    parser.add_argument(
        "--password",
        default=os.environ.get("PIPELINE_ADMIN_PASSWORD", ""),
        help="with --url or --data-dir: their password (default: PIPELINE_ADMIN_PASSWORD)",
    )
    args = parser.parse_args()
    if args.data_dir:
        runtime = running_system(args.data_dir)
        processes = {**runtime["pids"], **runtime.get("service_pids", {})}
        since = datetime.now(UTC)
        figures = asyncio.run(
            drive(runtime["api"], args.submitters, args.executions, args.username, args.password, processes, args.wait)
        )
        figures["stages"] = stages(runtime, since)
    elif args.url:
        figures = asyncio.run(
            drive(args.url, args.submitters, args.executions, args.username, args.password, wait=args.wait)
        )
    else:
        with own_system() as url:
            figures = asyncio.run(drive(url, args.submitters, args.executions, *BENCH_ADMIN, wait=args.wait))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
