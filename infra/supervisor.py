"""`pipeline run`: services, then the API and every worker as child processes, until Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import psycopg

from infra.cli import ensure_secret_key, python_command, spawn
from infra.kafka import ensure_topics
from infra.postgres import check_schema, migrate
from infra.settings import Settings, load_settings
from projections.users import admin_exists

CHILDREN = {
    "processor": ("worker", "processor"),
    "projections": ("worker", "projections"),
    "executor": ("worker", "executor"),
    "api": ("api",),
}
RESTART_DELAY = 2.0
RUNTIME_FILE = "runtime.json"  # where a running system says what it is made of (for bench/ and operators)


def run_everything(settings: Settings) -> int:
    """Start (or reuse) the services, then supervise the API and workers; restart any that die."""
    from infra.services import ManagedServices

    data_dir = Path(settings.storage.data_dir).resolve()
    logs = data_dir / "logs"
    managed = ManagedServices(
        data_dir,
        kafka_bootstrap=settings.kafka.bootstrap_servers or None,
        database_url=settings.database.url or None,
        redis_url=settings.redis.url or None,
    )
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, _f: stopping.append(s))
    children: dict[str, subprocess.Popen[bytes]] = {}
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
            children[name] = spawn(python_command(*args), env, logs / f"{name}.log")
        _write_runtime(data_dir, effective, children, managed.pids())
        _announce(effective, endpoints, data_dir)
        if first_admin_password:
            print(
                f"First start: admin {effective.admin.username!r} gets the password {first_admin_password}"
                " (shown once; change it with POST /api/v1/auth/password).\n",
                flush=True,
            )
        while not stopping:
            time.sleep(0.5)
            for name, child in list(children.items()):
                code = child.poll()
                if code is not None and not stopping:
                    print(f"{name} exited with {code}; restarting (log: {logs / f'{name}.log'})", flush=True)
                    time.sleep(RESTART_DELAY)
                    children[name] = spawn(python_command(*CHILDREN[name]), env, logs / f"{name}.log")
                    _write_runtime(data_dir, effective, children, managed.pids())
        print("stopping...", flush=True)
        return 0
    finally:
        _stop_children(children)
        managed.stop()
        (data_dir / RUNTIME_FILE).unlink(missing_ok=True)


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
    data_dir: Path, settings: Settings, children: dict[str, subprocess.Popen[bytes]], services: dict[str, int]
) -> None:
    runtime = {
        "api": f"http://{settings.server.host}:{settings.server.port}",
        "database_url": settings.database.url,
        "schema": settings.database.schema,
        "kafka_bootstrap_servers": settings.kafka.bootstrap_servers,
        "redis_url": settings.redis.url,
        "pids": {name: child.pid for name, child in children.items()},
        "service_pids": services,
    }
    (data_dir / RUNTIME_FILE).write_text(json.dumps(runtime, indent=2))


def _announce(settings: Settings, endpoints: object, data_dir: Path) -> None:
    host, port = settings.server.host, settings.server.port
    print(
        "\nPipeline Gateway is starting:\n"
        f"  API            http://{host}:{port}   (docs: http://{host}:{port}/api/docs, health: /health)\n"
        f"  Kafka          {settings.kafka.bootstrap_servers}\n"
        f"  PostgreSQL     {settings.database.url} (schema {settings.database.schema})\n"
        f"  Redis          {settings.redis.url}\n"
        f"  data           {data_dir}\n"
        f"  logs           {data_dir / 'logs'}\n"
        "Ctrl-C stops everything.\n",
        flush=True,
    )


def _stop_children(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
