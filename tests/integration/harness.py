"""Test harness: workers as real child processes (so they can be SIGKILLed) and waits on positions."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from infra.adapters.codec import make_mapper
from infra.runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# Waits for a system to start (the API answering, the first-start admin able to log in). It takes
# ~5-20 s here, but past 60 s when CI runs other suites on the same two cores; a wait polls, so the
# bound costs nothing when the start is quick, and it ends at once if a process exits (its log says
# why) rather than after the bound.
START_TIMEOUT_S = 300.0


class Worker:
    """One `pipeline worker NAME` process with the test's environment."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, log_name: str | None = None) -> None:
        self.name = name
        self.env = {**os.environ, **env}
        self.log_path = log_dir / f"{log_name or name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", *(["api"] if self.name == "api" else ["worker", self.name])],
            env=self.env,
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no flush, like a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def check_alive(self) -> None:
        """Raise, with the end of its log, if the process has exited: a wait for it would be in vain."""
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"the {self.name} process exited ({self.process.returncode}):\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns a truthy value (not a sleep-and-hope: it waits on state)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def query(settings: Settings, sql: str, params: tuple[Any, ...] = (), schema: str | None = None) -> list[Any]:
    async with await psycopg.AsyncConnection.connect(
        settings.database.url, options=f"-c search_path={schema or settings.database.schema}"
    ) as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall()


async def snapshot_read_models(settings: Settings, schema: str | None = None) -> dict[str, list[Any]]:
    """Every read model's rows in a stable order, minus columns that record when a row was written."""
    return {
        "data_objects": await query(
            settings,
            "SELECT object_id, object_type, content_type, content_hash, storage_location, size, metadata, owner,"
            " version, created_at, updated_at FROM data_objects ORDER BY object_id",
            schema=schema,
        ),
        "annotations": await query(settings, "SELECT * FROM annotations ORDER BY annotation_id", schema=schema),
        "audit_log": await query(
            settings,
            "SELECT event_id, aggregate_id, aggregate_version, event_type, command_id, actor, occurred_at, prev_hash,"
            " hash, topic_partition, topic_offset, payload FROM audit_log ORDER BY topic_partition, topic_offset",
            schema=schema,
        ),
        "aggregate_versions": await query(
            settings, "SELECT * FROM aggregate_versions ORDER BY aggregate_id", schema=schema
        ),
        "conversations": await query(settings, "SELECT * FROM conversations ORDER BY conversation_id", schema=schema),
        "conversation_messages": await query(
            settings, "SELECT * FROM conversation_messages ORDER BY conversation_id, seq", schema=schema
        ),
    }


def event_record(aggregate_id: uuid.UUID, version: int, event: Any) -> tuple[bytes, list[tuple[str, bytes]]]:
    """An events-topic record as the processor writes it (headers abridged to what readers need)."""
    stored = make_mapper().to_stored_event(event)
    return raw_event_record(aggregate_id, version, stored.topic, stored.state, event.timestamp)


def raw_event_record(
    aggregate_id: uuid.UUID, version: int, topic: str, state: bytes, timestamp: datetime
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The same from an already serialized event (e.g. one in an older schema version)."""
    headers = [
        ("event_id", uuid.uuid4().hex.encode()),
        ("event_type", topic.encode()),
        ("schema_version", b"1"),
        ("aggregate_id", str(aggregate_id).encode()),
        ("aggregate_version", str(version).encode()),
        ("command_id", uuid.uuid4().hex.encode()),
        ("correlation_id", b"poison"),
        ("causation_id", b"poison"),
        ("actor", b"poisoner"),
        ("actor_role", b"admin"),
        ("timestamp", timestamp.isoformat().encode()),
        ("prev_hash", b""),
        ("hash", b"h"),
    ]
    return state, headers


UNASKED = ("notification", "resync")  # /ws messages that come without a request


async def ws_ask(ws: Any, message: dict[str, Any]) -> dict[str, Any]:
    """Send one /ws message; its reply (notifications and resyncs, which come unasked, are skipped)."""
    await ws.send(json.dumps(message))
    while True:
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if reply["type"] not in UNASKED:
            return reply
