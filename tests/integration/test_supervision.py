"""`pipeline run` keeps itself alive: SIGKILLed services come back, a frozen worker is replaced.

One system for the module, started exactly as `make run` starts it (its own Kafka, PostgreSQL and
Redis under its own data directory, not the session's services: these tests kill them). Short
supervision settings keep the module to a couple of minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.adapters.kafka import topic_partitions
from infra.provision import kafka_broker
from infra.runtime.heartbeat import heartbeat_path, read_beat
from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME
from tests.integration.conftest import free_port, login
from tests.integration.harness import ROOT, eventually, ws_ask

pytestmark = pytest.mark.slow
STALL_SECONDS = 6
SEND_TIMEOUT = 2


@dataclass
class System:
    base_url: str
    data_dir: Path
    output: Path
    process: subprocess.Popen[bytes]

    def runtime(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.data_dir / "runtime.json").read_text()))
        except (OSError, ValueError):
            return {}

    def pid(self, name: str) -> int:
        runtime = self.runtime()
        return int({**runtime.get("pids", {}), **runtime.get("service_pids", {})}[name])

    def printed(self) -> str:
        return self.output.read_text(errors="replace")


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    # Not under pytest's temporary directory: a later pytest session makes /tmp/pytest-of-<user> 0700
    # again, and PostgreSQL, restarted here as its own user, must still reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="pipeline-supervision-"))
    data_dir = root / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL")}
    env.update(
        PIPELINE_DATA_DIR=str(data_dir),
        PIPELINE_PORT=str(port),
        PIPELINE_KAFKA_PARTITIONS="2",
        PIPELINE_ADMIN_USERNAME=ADMIN_USERNAME,
        PIPELINE_ADMIN_PASSWORD=ADMIN_PASSWORD,
        SECRET_KEY="test-secret-" + uuid.uuid4().hex + uuid.uuid4().hex,
        PIPELINE_RATE_LIMITING_ADMIN_LIMIT="1000000 per hour",
        PIPELINE_RATE_LIMITING_BURST_LIMIT="100000 per minute",
        PIPELINE_CONSISTENCY_WAIT_TIMEOUT_SECONDS="15",
        PIPELINE_KAFKA_COMMAND_TIMEOUT_SECONDS="20",
        PIPELINE_KAFKA_SEND_TIMEOUT_SECONDS=str(SEND_TIMEOUT),
        PIPELINE_SUPERVISION_STALL_SECONDS=str(STALL_SECONDS),
        # A service is down at least this long before its restart: longer than /health's 1 s cache, so
        # the tests can see /health report it (PostgreSQL itself is back within a second after that).
        PIPELINE_SUPERVISION_RESTART_BACKOFF_SECONDS="2",
        PIPELINE_SUPERVISION_RESTART_BACKOFF_MAX_SECONDS="3",
    )
    output = root / "run.out"
    with output.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "run"], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    started = System(f"http://127.0.0.1:{port}", data_dir, output, process)
    try:
        deadline = time.monotonic() + 180
        while "\nready: " not in started.printed():  # the console's word that the system can serve
            assert process.poll() is None, f"`pipeline run` exited:\n{started.printed()[-4000:]}"
            assert time.monotonic() < deadline, f"`pipeline run` never printed ready:\n{started.printed()[-4000:]}"
            time.sleep(0.2)
        # Right after that line, the first login works (it failed with 401 before /ready existed).
        first_login = httpx.post(
            f"{started.base_url}/api/v1/auth/login",
            json={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD},
            timeout=30,
        )
        assert first_login.status_code == 200, first_login.text
        while not _healthy_sync(started):
            assert process.poll() is None, f"`pipeline run` exited:\n{started.printed()[-4000:]}"
            assert time.monotonic() < deadline, f"the system did not become healthy:\n{started.printed()[-4000:]}"
            time.sleep(0.5)
        yield started
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if not os.environ.get("PIPELINE_KEEP_TEST_DATA"):  # keep it to read run.out and the logs
            shutil.rmtree(root, ignore_errors=True)


def _healthy_sync(system: System) -> bool:
    """Healthy, and ready: the first-start admin is registered."""
    try:
        health = httpx.get(f"{system.base_url}/health", timeout=5)
        ready = httpx.get(f"{system.base_url}/ready", timeout=5)
    except httpx.TransportError:
        return False
    return health.status_code == 200 and health.json()["status"] == "healthy" and ready.status_code == 200


@pytest.fixture
async def client(system: System) -> Any:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=60) as anonymous:
        tokens = await login(anonymous, ADMIN_USERNAME, ADMIN_PASSWORD)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with httpx.AsyncClient(base_url=system.base_url, timeout=60, headers=headers) as http:
        yield http


async def healthy(http: httpx.AsyncClient) -> bool:
    try:
        response = await http.get("/health")
    except httpx.TransportError:
        return False
    return response.status_code == 200 and response.json()["status"] == "healthy"


@dataclass
class Load:
    """A bounded ingest load: a few writers, every answer kept."""

    acked: dict[str, str] = field(default_factory=dict)  # object id -> position token
    answers: list[tuple[float, float, int]] = field(default_factory=list)  # (started, seconds, status)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def writer(self, http: httpx.AsyncClient, number: int) -> None:
        sent = 0
        while not self.stop.is_set() and sent < 400:
            sent += 1
            started = time.monotonic()
            try:
                response = await http.post(
                    "/api/v1/ingest", json={"content": f"writer {number} record {sent}", "content_type": "text/plain"}
                )
            except httpx.TransportError:
                self.answers.append((started, time.monotonic() - started, 0))
                await asyncio.sleep(0.2)
                continue
            self.answers.append((started, time.monotonic() - started, response.status_code))
            if response.status_code == 201:
                body = response.json()
                self.acked[body["object_id"]] = body["position"]
            else:
                assert response.status_code in (503, 504), response.text  # never a 500
                await asyncio.sleep(0.2)


async def sample_health(http: httpx.AsyncClient, samples: list[tuple[float, str]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            response = await http.get("/health", timeout=10)
            samples.append((time.monotonic(), response.json()["status"]))
            ready = await http.get("/ready", timeout=10)
            samples.append((time.monotonic(), f"ready:{ready.status_code}"))
        except (httpx.TransportError, ValueError):
            samples.append((time.monotonic(), "no answer"))
        await asyncio.sleep(0.2)


async def all_readable(http: httpx.AsyncClient, acked: dict[str, str]) -> None:
    for object_id, position in acked.items():
        response = await http.get(f"/api/v1/data/{object_id}", headers={"X-Consistency-Token": position})
        assert response.status_code == 200, (object_id, response.text)


async def count_events(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        count = 0
        async with asyncio.timeout(60):
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    count += len(records)
        return count
    finally:
        await consumer.stop()


async def audit_rows(system: System) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(system.runtime()["database_url"]) as conn:
        row = await (await conn.execute("SELECT count(*) FROM audit_log")).fetchone()
        return int(row[0]) if row else -1


async def last_moment_down(bootstrap: str) -> float:
    """Probe the broker until it serves again; return when it was last seen not serving."""
    last_down = time.monotonic()
    while True:
        probed_at = time.monotonic()
        if await asyncio.to_thread(kafka_broker.broker_ready, bootstrap):
            return last_down
        last_down = probed_at
        await asyncio.sleep(0.2)


async def restarted(system: System, name: str, old_pid: int) -> bool:
    try:
        return system.pid(name) != old_pid
    except KeyError:
        return False


async def test_the_api_and_every_worker_run_on_uvloop(system: System, client: httpx.AsyncClient) -> None:
    assert (await client.get("/ready")).status_code == 200
    for name in ("api", "processor", "projections", "executor"):
        maps = Path(f"/proc/{system.pid(name)}/maps").read_text()
        assert "/uvloop/loop." in maps, f"{name} has not loaded uvloop"


async def test_a_frozen_worker_is_replaced_by_the_watchdog(system: System, client: httpx.AsyncClient) -> None:
    frozen = system.pid("projections")
    os.kill(frozen, signal.SIGSTOP)
    try:
        response = await client.post("/api/v1/ingest", json={"content": "while frozen", "content_type": "text/plain"})
        assert response.status_code == 201, response.text  # the processor does not need the projections
        await eventually(lambda: restarted(system, "projections", frozen), timeout=STALL_SECONDS + 30, what="watchdog")
        assert "watchdog: projections" in system.printed()
        body = response.json()
        read = await client.get(f"/api/v1/data/{body['object_id']}", headers={"X-Consistency-Token": body["position"]})
        assert read.status_code == 200, read.text
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen, signal.SIGKILL)  # only if the watchdog did not: never leave it behind


async def test_sigkilled_broker_is_restarted_and_no_acknowledged_write_is_lost(
    system: System, client: httpx.AsyncClient
) -> None:
    await eventually(lambda: healthy(client), timeout=60, what="a healthy system before the kill")
    load, sampling = Load(), asyncio.Event()
    samples: list[tuple[float, str]] = []
    tasks = [asyncio.create_task(load.writer(client, n)) for n in range(4)]
    tasks.append(asyncio.create_task(sample_health(client, samples, sampling)))
    try:
        await eventually(lambda: _true(len(load.acked) >= 20), timeout=60, what="writes before the kill")
        kafka = system.pid("kafka")
        os.kill(kafka, signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.sleep(1.0)  # the writers' requests in flight wait for their outcomes; new ones must not
        tasks.append(asyncio.create_task(load.writer(client, 99)))
        await eventually(lambda: restarted(system, "kafka", kafka), timeout=30, what="the broker to be restarted")
        still_down_at = await last_moment_down(system.runtime()["kafka_bootstrap_servers"])
        acked_before = len(load.acked)
        await eventually(lambda: healthy(client), timeout=150, what="a healthy system after the broker's restart")
        await eventually(
            lambda: _true(len(load.acked) >= acked_before + 20), timeout=60, what="writes after the restart"
        )
    finally:
        load.stop.set()
        sampling.set()
        await asyncio.gather(*tasks)

    # While the broker was gone, /health never said "healthy" (allow its one-second cache).
    down = [status for at, status in samples if killed_at + 2 < at < still_down_at]
    assert down and "healthy" not in down, (down, still_down_at - killed_at)
    # ... and /ready said 503 (not ready) throughout, and is 200 again now.
    ready_down = [status for status in down if status.startswith("ready:")]
    assert ready_down and set(ready_down) == {"ready:503"}, ready_down
    assert (await client.get("/ready")).status_code == 200
    # Writes sent while it was gone were refused quickly instead of hanging.
    during = [(round(at - killed_at, 1), round(took, 1), status) for at, took, status in load.answers if at > killed_at]
    refused = [(took, status) for started, took, status in load.answers if started > killed_at + 2 and status == 503]
    assert refused, (during[:40], still_down_at - killed_at)
    assert max(took for took, _ in refused) < SEND_TIMEOUT + 5, refused

    await all_readable(client, load.acked)
    runtime = system.runtime()
    topic = "pipeline.events"
    events = await count_events(runtime["kafka_bootstrap_servers"], topic)

    async def projected_all() -> bool:
        return await audit_rows(system) == events

    await eventually(projected_all, timeout=60, what="PostgreSQL rows = Kafka events")
    # Every worker resumed: the executor runs a graph, and nobody is left with records waiting.
    graph = {
        "nodes": [{"id": "src", "type": "input", "params": {"name": "text"}}, {"id": "n", "type": "normalize"}],
        "edges": [{"from": "src.value", "to": "n.text"}],
    }
    submitted = await client.post("/api/v1/execute", json={"graph": graph, "inputs": {"text": "After The Outage"}})
    assert submitted.status_code == 202, submitted.text
    execution_id = submitted.json()["execution_id"]

    async def completed() -> bool:
        response = await client.get(f"/api/v1/executions/{execution_id}")
        return response.status_code == 200 and response.json()["status"] == "completed"

    await eventually(completed, timeout=60, what="an execution after the broker's restart")

    async def no_lag() -> bool:
        beats = [read_beat(heartbeat_path(system.data_dir, w)) for w in ("processor", "projections", "executor")]
        return all(b is not None and b.lag == 0 for b in beats)

    await eventually(no_lag, timeout=30, what="every worker caught up (lag 0)")


async def test_sigkilled_postgres_is_restarted_and_reads_come_back(system: System, client: httpx.AsyncClient) -> None:
    await eventually(lambda: healthy(client), timeout=60, what="a healthy system before the kill")
    before = await client.post("/api/v1/ingest", json={"content": "before", "content_type": "text/plain"})
    assert before.status_code == 201
    postgres = system.pid("postgres")
    token = str(client.headers["authorization"]).split(" ", 1)[1]
    ws_url = system.base_url.replace("http://", "ws://") + "/ws/postgres-outage"
    async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        os.kill(postgres, signal.SIGKILL)

        async def unhealthy() -> bool:
            response = await client.get("/health")
            return response.status_code == 503 and response.json()["status"] == "unhealthy"

        # Restarted within a second or two: the down window is short, but /health must see it.
        await eventually(unhealthy, timeout=15, what="/health to report PostgreSQL down")
        # A /ws message that needs PostgreSQL meanwhile is answered (an error), and the connection stays.
        reply = await ws_ask(ws, {"type": "chat_message", "content": "anything about quokkas?"})
        assert reply["type"] == "chat_response" or reply["code"] == "unavailable", reply
        assert (await ws_ask(ws, {"type": "ping"}))["type"] == "pong"
    await eventually(lambda: restarted(system, "postgres", postgres), timeout=30, what="PostgreSQL restarted")
    await eventually(lambda: healthy(client), timeout=120, what="a healthy system after PostgreSQL's restart")
    after = await client.post("/api/v1/ingest", json={"content": "after", "content_type": "text/plain"})
    assert after.status_code == 201, after.text
    await all_readable(client, {r.json()["object_id"]: r.json()["position"] for r in (before, after)})


async def test_sigkilled_redis_is_restarted(system: System, client: httpx.AsyncClient) -> None:
    await eventually(lambda: healthy(client), timeout=60, what="a healthy system before the kill")
    redis = system.pid("redis")
    os.kill(redis, signal.SIGKILL)

    await eventually(lambda: restarted(system, "redis", redis), timeout=30, what="Redis restarted")
    await eventually(lambda: healthy(client), timeout=60, what="a healthy system after Redis's restart")
    response = await client.post("/api/v1/ingest", json={"content": "after redis", "content_type": "text/plain"})
    assert response.status_code == 201, response.text


async def _true(value: bool) -> bool:
    return value
