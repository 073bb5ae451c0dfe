"""`pipeline run`: services, then the API and every worker as child processes, until Ctrl-C.

Everything started here is supervised: a service (Kafka, PostgreSQL, Redis; only those started here)
or a child that exits is started again, with backoff, on the same data and port; a worker that is
alive but stuck (infra.runtime.heartbeat.stall_reason) is killed by the watchdog and started again. The
watchdog waits while a service started here is down or restarting: no worker gets far without it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import psycopg

from infra.adapters.kafka import ensure_topics
from infra.adapters.postgres import check_schema, migrate
from infra.provision.services import Backoff, ManagedServices
from infra.runtime.heartbeat import heartbeat_path, read_beat, stall_reason
from infra.runtime.processes import ensure_secret_key, python_command, spawn
from infra.runtime.runtime_file import RUNTIME_FILE, write_runtime
from infra.runtime.settings import Settings, load_settings
from projections.users import admin_exists

CHILDREN = {
    "processor": ("worker", "processor"),
    "projections": ("worker", "projections"),
    "executor": ("worker", "executor"),
    "api": ("api",),
}
WORKERS = ("processor", "projections", "executor")  # the ones that write heartbeats
TICK = 0.5
READY_POLL_TIMEOUT = 1.0
READY_RECHECK_SECONDS = 5.0  # once ready, /ready is asked this often (to say when it stops being ready)


@dataclasses.dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    started: float = dataclasses.field(default_factory=time.time)
    failures: int = 0
    restart_at: float | None = None


def run_everything(settings: Settings) -> int:
    """Start (or reuse) the services, then supervise them, the API and the workers until Ctrl-C."""
    data_dir = Path(settings.storage.data_dir).resolve()
    logs = data_dir / "logs"
    s = settings.supervision
    backoff = Backoff(first=s.restart_backoff_seconds, limit=s.restart_backoff_max_seconds)
    managed = ManagedServices(
        data_dir,
        kafka_bootstrap=settings.kafka.bootstrap_servers or None,
        database_url=settings.database.url or None,
        redis_url=settings.redis.url or None,
        log=lambda line: print(line, flush=True),
        backoff=backoff,
    )
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, _f: stopping.append(s))
    children: dict[str, _Child] = {}
    try:
        endpoints = managed.start()
        env = dict(os.environ)
        env.update(
            DATABASE_URL=endpoints.database_url,
            KAFKA_BOOTSTRAP_SERVERS=endpoints.kafka_bootstrap,
            REDIS_URL=endpoints.redis_url,
            PIPELINE_DATA_DIR=str(data_dir),
            SECRET_KEY=settings.authentication.secret_key or ensure_secret_key(data_dir),
        )
        effective = load_settings(environ=env)
        first_admin_password = asyncio.run(_prepare(effective))
        if first_admin_password:
            # Handed to the API (which creates the admin) and shown here once, never written to a log.
            env["PIPELINE_ADMIN_PASSWORD"] = first_admin_password
        for name, args in CHILDREN.items():
            children[name] = _Child(name, spawn(python_command(*args), env, logs / f"{name}.log"))
        runtime = _write_runtime(data_dir, effective, children, managed.pids())
        _announce(effective, endpoints, data_dir)
        if first_admin_password:
            print(
                f"First start: admin {effective.admin.username!r} gets the password {first_admin_password}"
                " (shown once; change it with POST /api/v1/auth/password).\n",
                flush=True,
            )
        services_up_since = time.time()
        ready = ReadyAnnouncer(effective)
        while not stopping:
            time.sleep(TICK)
            if stopping:
                break
            was_ready = managed.ready()
            managed.watch()
            services_ready = managed.ready()
            if services_ready and not was_ready:
                services_up_since = time.time()
            for child in children.values():
                if services_ready:
                    _watchdog(child, data_dir, s.stall_seconds, services_up_since, logs)
                _restart_if_exited(child, env, logs, backoff)
            current = {
                "pids": {name: child.process.pid for name, child in children.items()},
                "service_pids": managed.pids(),
            }
            if current != runtime:
                runtime = _write_runtime(data_dir, effective, children, managed.pids())
            ready.poll()
        print("stopping...", flush=True)
        return 0
    finally:
        _stop_children(children)
        managed.stop()
        (data_dir / RUNTIME_FILE).unlink(missing_ok=True)


def _watchdog(child: _Child, data_dir: Path, stall_seconds: float, since: float, logs: Path) -> None:
    """SIGKILL a worker that is alive but stuck; the restart follows like after any exit."""
    if child.name not in WORKERS or child.process.poll() is not None:
        return
    beat = read_beat(heartbeat_path(data_dir, child.name))
    reason = stall_reason(beat, child.process.pid, time.time(), max(child.started, since), stall_seconds)
    if reason is None:
        return
    print(
        f"watchdog: {child.name} (pid {child.process.pid}) is stuck: {reason}; killing it"
        f" (log: {logs / f'{child.name}.log'})",
        flush=True,
    )
    # SIGKILL, not SIGTERM: a stuck loop may never get to its signal handler, and a frozen process
    # keeps a SIGTERM pending. Every worker is built to survive a crash at any point.
    child.process.kill()
    child.process.wait()


def _restart_if_exited(child: _Child, env: dict[str, str], logs: Path, backoff: Backoff) -> None:
    now = time.time()
    code = child.process.poll()
    if code is None:
        if now - child.started > backoff.reset_after:
            child.failures = 0
        return
    log = logs / f"{child.name}.log"
    if child.restart_at is None:
        delay = backoff.delay(child.failures)
        child.failures += 1
        child.restart_at = now + delay
        print(f"{child.name} exited with {code}; restarting in {delay:.1f} s (log: {log})", flush=True)
    elif now >= child.restart_at:
        child.restart_at = None
        child.process = spawn(python_command(*CHILDREN[child.name]), env, log)
        child.started = now


async def _prepare(settings: Settings) -> str | None:
    """Create topics and schema before the children start, so they never race to create them.

    Returns a generated first-admin password when no admin exists and none was configured.
    """
    await ensure_topics(settings.kafka)
    await migrate(settings.database.url, settings.database.schema)
    if settings.admin.password:
        return None
    options = f"-c search_path={check_schema(settings.database.schema)}"
    async with await psycopg.AsyncConnection.connect(settings.database.url, options=options) as conn:
        if await admin_exists(conn):
            return None
    return secrets.token_urlsafe(18)


def _write_runtime(
    data_dir: Path, settings: Settings, children: dict[str, _Child], services: dict[str, int]
) -> dict[str, dict[str, int]]:
    """Write runtime.json; return the process ids written (to notice when they change)."""
    pids = {name: child.process.pid for name, child in children.items()}
    write_runtime(data_dir, settings, pids, services)
    return {"pids": pids, "service_pids": services}


def _announce(settings: Settings, endpoints: object, data_dir: Path) -> None:
    host, port, health = settings.server.host, settings.server.port, settings.monitoring.health_check_path
    print(
        "\nPipeline Gateway is starting:\n"
        f"  API            http://{host}:{port}   (docs: http://{host}:{port}/api/docs, health: {health})\n"
        f"  Kafka          {settings.kafka.bootstrap_servers}\n"
        f"  PostgreSQL     {settings.database.url} (schema {settings.database.schema})\n"
        f"  Redis          {settings.redis.url}\n"
        f"  data           {data_dir}\n"
        f"  logs           {data_dir / 'logs'}\n"
        "Ctrl-C stops everything.\n",
        flush=True,
    )


class ReadyAnnouncer:
    """Prints "ready" with the URLs once /ready answers 200 (and again after it failed and recovered),
    so the console says when a login will work, not merely that processes were started."""

    def __init__(self, settings: Settings) -> None:
        host, port = settings.server.host, settings.server.port
        self.base = f"http://{host}:{port}"
        self.metrics_path = settings.monitoring.metrics_path
        self.ready: bool | None = None  # None: never ready yet
        self.asked_at = 0.0

    def poll(self) -> None:
        """Ask /ready once (bounded by a short timeout) and print on a change."""
        if self.ready and time.monotonic() - self.asked_at < READY_RECHECK_SECONDS:
            return
        self.asked_at = time.monotonic()
        try:
            with urllib.request.urlopen(f"{self.base}/ready", timeout=READY_POLL_TIMEOUT) as answer:
                now_ready = answer.status == 200
        except (OSError, ValueError):  # HTTPError (503) is an OSError too
            now_ready = False
        if now_ready and not self.ready:
            again = " again" if self.ready is False else ""
            print(
                f"ready{again}: API {self.base}  docs {self.base}/api/docs  GraphQL {self.base}/api/graphql"
                f"  metrics {self.base}{self.metrics_path}  readiness {self.base}/ready",
                flush=True,
            )
            self.ready = True
        elif not now_ready and self.ready:
            print(f"not ready: see {self.base}/ready", flush=True)
            self.ready = False


def _stop_children(children: dict[str, _Child]) -> None:
    processes = [child.process for child in children.values()]
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
