"""Replay benchmark: rebuild the read models from a log of a million events; prints JSON.

1. Generate: ``--events`` events (default 1,000,000: objects ingested with three annotations each)
   made by the real command handlers and the processor's own event building (``event_records``:
   codec, headers, hash chain), produced in bulk straight onto a fresh events topic.
2. Rebuild: `pipeline projections rebuild --into <fresh schema>` as a child process (the real rebuild
   code); figures: its own time from first fetch to caught up and events/s over it (the wall time with
   the process's start-up is beside it), the child's peak RSS.
3. COPY: the rows the rebuild wrote (every read model table it filled), exported to a file first
   (not timed), then `COPY ... FROM STDIN (FORMAT binary)` into another fresh schema with the same
   tables and indexes, in one transaction; figures: seconds, rows, and events/s (events of the log
   per second of COPY) to compare with the rebuild's (goal: rebuild >= 0.5x).
   Beside both: the PostgreSQL server's CPU seconds over each (when it runs on this machine: its
   postmaster's and backends' /proc times, found through ``data_directory``; the server's other work,
   e.g. autovacuum, counts too), so rebuild and COPY compare per CPU second of everything they cost
   (``rebuild_vs_copy_per_cpu``), steadier than wall time on a shared machine.
4. Verify: `pipeline audit verify --json` over the same topic as a child process, cross-checking the
   rebuilt schema's audit_log; its JSON (plus wall time and peak RSS), or {"error": ...} when it fails.

Services: DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS, else those of a running `make run` (runtime.json),
else started here under a temporary directory. Topics and schemas are fresh and dropped at the end
(``--keep`` keeps them).

    python bench/replay.py --events 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from commands.data import AnnotateObject, IngestData, annotate_object, ingest_data  # noqa: E402
from commands.envelope import Actor, CommandEnvelope  # noqa: E402
from commands.processor import event_records  # noqa: E402
from infra.adapters.blobstore import LocalBlobStore  # noqa: E402
from infra.adapters.codec import make_mapper  # noqa: E402
from infra.adapters.kafka import ensure_topics  # noqa: E402
from infra.adapters.postgres import migrate  # noqa: E402
from infra.runtime.runtime_file import with_running_system  # noqa: E402
from infra.runtime.settings import Settings, load_settings  # noqa: E402

ANNOTATIONS_PER_OBJECT = 3
BLOB_TEXT = "The quick brown fox jumps over the lazy dog. Kafka keeps an ordered log; PostgreSQL serves reads.\n"
ACTOR = Actor("bench-user", "user")
# The tables a full rebuild fills from DataObject events (the others stay empty), copied in step 3.
COPIED = ("data_objects", "annotations", "notification_subjects", "audit_log", "aggregate_versions")


def envelope(kind: str, object_id: str, n: int) -> CommandEnvelope:
    return CommandEnvelope(
        command_id=f"bench-{object_id}-{n}", type=kind, aggregate_id=object_id, payload={}, actor=ACTOR
    )


async def generate(settings: Settings, events: int) -> dict[str, Any]:
    """Produce ``events`` events (whole objects) onto the settings' fresh events topic."""
    topics = await ensure_topics(settings.kafka)
    mapper = make_mapper()
    # Every object names one real blob, so the rebuild reads and indexes content as it would live.
    blob = LocalBlobStore(settings.storage.blob_path).put(BLOB_TEXT.encode())
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        linger_ms=50,
        max_batch_size=1_000_000,
        max_request_size=1_048_576,
        acks=1,
    )
    await producer.start()
    started = time.perf_counter()
    produced = 0
    pending: list[asyncio.Future[Any]] = []
    try:
        while produced < events:
            object_id = str(uuid.uuid4())
            ingest = IngestData(
                content_type="text/plain",
                content_hash=blob.content_hash,
                size=blob.size,
                location=blob.location,
                metadata={"source": "bench", "n": produced},
            )
            obj = ingest_data(None, ingest, envelope("IngestData", object_id, 0))
            last_hash = ""
            records = event_records(mapper, envelope("IngestData", object_id, 0), last_hash, obj)
            for n in range(1, ANNOTATIONS_PER_OBJECT + 1):
                last_hash = records[-1][3]
                note = AnnotateObject(annotation_id=f"{object_id}-{n}", annotation_type="label", content=f"tag {n}")
                command = envelope("AnnotateObject", object_id, n)
                obj = annotate_object(obj, note, command)
                records += event_records(mapper, command, last_hash, obj)
            for stored, _event, headers, _hash in records:
                pending.append(
                    await producer.send(topics.events, stored.state, key=object_id.encode(), headers=headers)
                )
            produced += len(records)
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
                print(f"  generated {produced} events", file=sys.stderr, flush=True)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    seconds = time.perf_counter() - started
    return {"events": produced, "seconds": round(seconds, 2), "events_per_s": round(produced / seconds)}


def run_child(args: list[str], env: dict[str, str]) -> tuple[int, str, float, int, float]:
    """Run `python -m infra.cli ...`: exit code, stdout, wall seconds, its own peak RSS in MB and CPU
    seconds (wait4)."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    out = child.stdout.read()  # its progress goes to our stderr; the result to stdout
    _pid, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return child.returncode, out, time.perf_counter() - started, round(usage.ru_maxrss / 1024), cpu


def postgres_pids(url: str) -> list[int] | None:
    """The local PostgreSQL server's postmaster and its children, or None when it is not readable here."""
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        postmaster = int((Path(row[0] if row else "") / "postmaster.pid").read_text().split()[0])
        children = [int(p) for p in Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()]
    except (OSError, ValueError, psycopg.Error):
        return None
    return [postmaster, *children]


def postgres_cpu(url: str) -> float | None:
    """CPU seconds the local PostgreSQL server has used so far (its postmaster with the backends it reaped,
    and the live children), or None when it cannot be read."""
    pids = postgres_pids(url)
    if pids is None:
        return None
    ticks = 0
    for n, pid in enumerate(pids):
        try:  # the fields after "(comm)" start at field 3 of proc(5)'s stat
            fields = [int(f) for f in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:15]]
        except (OSError, ValueError):  # a backend that ended meanwhile: its time is in its postmaster's
            continue
        # utime and stime (fields 14, 15); for the postmaster also its reaped children's (16, 17)
        ticks += sum(fields) if n == 0 else fields[0] + fields[1]
    return ticks / os.sysconf("SC_CLK_TCK")


def rebuild(env: dict[str, str], schema: str, events: int) -> dict[str, Any]:
    pg_before = postgres_cpu(env["DATABASE_URL"])
    code, out, seconds, rss, cpu = run_child(["projections", "rebuild", "--into", schema], env)
    pg_after = postgres_cpu(env["DATABASE_URL"])
    applied = re.search(r"applied (\d+) events in ([\d.]+)s", out)
    if code != 0 or applied is None:
        return {"error": f"`pipeline projections rebuild` exited {code}: {out[-500:]!r}"}
    own = float(applied.group(2))  # from its first fetch to caught up: without start-up and migrations
    workers = re.search(r"with (\d+) worker", out)
    return {
        "seconds": round(own, 2),
        "events_per_s": round(events / own),
        "wall_seconds_with_start_up": round(seconds, 2),
        # On a shared machine the process waits for a core most of the time: its CPU is the steadier figure.
        "cpu_seconds": round(cpu, 2),
        "events_per_cpu_s": round(events / cpu),
        "peak_rss_mb": rss,  # of its largest process (wait4 folds in the worker processes it waited for)
        "workers": int(workers.group(1)) if workers else 1,
        "events_applied": int(applied.group(1)),
        **cpu_with_postgres(events, cpu, pg_before, pg_after),
    }


def cpu_with_postgres(events: int, own: float, before: float | None, after: float | None) -> dict[str, Any]:
    """PostgreSQL's CPU seconds over a step and events per CPU second of it with ``own`` (the client's)."""
    if before is None or after is None:
        return {}
    total = own + after - before
    return {"postgres_cpu_seconds": round(after - before, 2), "events_per_cpu_s_with_postgres": round(events / total)}


async def copy_rows(settings: Settings, source: str, target: str, events: int, work: Path) -> dict[str, Any]:
    """Time a binary COPY of ``source``'s filled tables into the same tables of a fresh ``target``."""
    await migrate(settings.database.url, target)
    files: dict[str, Path] = {}
    rows = 0
    async with await psycopg.AsyncConnection.connect(settings.database.url) as conn:
        for table in COPIED:
            files[table] = work / f"{table}.copy"
            with files[table].open("wb") as out:
                async with conn.cursor().copy(f'COPY "{source}"."{table}" TO STDOUT (FORMAT binary)') as copy:
                    async for chunk in copy:
                        out.write(chunk)
            cur = await conn.execute(f'SELECT count(*) FROM "{source}"."{table}"')
            counted = await cur.fetchone()
            rows += int(counted[0]) if counted else 0
        pg_before = postgres_cpu(settings.database.url)
        started = time.perf_counter()
        client = time.process_time()
        async with conn.transaction():
            for table in COPIED:
                async with conn.cursor().copy(f'COPY "{target}"."{table}" FROM STDIN (FORMAT binary)') as copy:
                    with files[table].open("rb") as data:
                        while chunk := data.read(1 << 20):
                            await copy.write(chunk)
        seconds = time.perf_counter() - started
        client = time.process_time() - client
    pg_after = postgres_cpu(settings.database.url)
    size = sum(f.stat().st_size for f in files.values())
    return {
        "seconds": round(seconds, 2),
        "rows": rows,
        "bytes": size,
        "rows_per_s": round(rows / seconds),
        "events_per_s": round(events / seconds),
        "client_cpu_seconds": round(client, 2),
        **cpu_with_postgres(events, client, pg_before, pg_after),
    }


def verify(env: dict[str, str], events: int) -> dict[str, Any]:
    code, out, seconds, rss, cpu = run_child(["audit", "verify", "--json"], env)
    try:  # its JSON is the last line (a summary line comes before it)
        figures: dict[str, Any] = json.loads(out.strip().rsplit("\n", 1)[-1])
    except ValueError:
        return {"error": f"`pipeline audit verify --json` exited {code}: {out[-500:]!r}"}
    return {
        "exit": code,
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds),
        "peak_rss_mb": rss,
        "cpu_seconds": round(cpu, 2),
        "result": figures,
    }


async def drop(settings: Settings, schemas: list[str], topics: list[str]) -> None:
    async with await psycopg.AsyncConnection.connect(settings.database.url, autocommit=True) as conn:
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        await admin.delete_topics([t for t in topics if t in existing])
    finally:
        await admin.close()


async def run(args: argparse.Namespace, env: dict[str, str], data_dir: str) -> dict[str, Any]:
    name = f"replay{uuid.uuid4().hex[:8]}"
    env = {**env, "PIPELINE_KAFKA_TOPIC_PREFIX": name, "PIPELINE_DATABASE_SCHEMA": name, "PIPELINE_DATA_DIR": data_dir}
    settings = load_settings(environ=env)
    figures: dict[str, Any] = {"cores": os.cpu_count(), "partitions": settings.kafka.partitions}
    schemas = [name, f"{name}_rebuilt", f"{name}_copy"]
    try:
        figures["generate"] = await generate(settings, args.events)
        events = figures["generate"]["events"]
        figures["rebuild"] = rebuild(env, schemas[1], events)
        with tempfile.TemporaryDirectory(prefix="replay-copy-") as work:
            figures["copy"] = await copy_rows(settings, schemas[1], schemas[2], events, Path(work))
        if "events_per_s" in figures["rebuild"]:
            figures["rebuild_vs_copy"] = round(figures["rebuild"]["events_per_s"] / figures["copy"]["events_per_s"], 3)
        per_cpu = "events_per_cpu_s_with_postgres"
        if per_cpu in figures["rebuild"] and per_cpu in figures["copy"]:
            figures["rebuild_vs_copy_per_cpu"] = round(figures["rebuild"][per_cpu] / figures["copy"][per_cpu], 3)
        # Against the rebuilt schema: its audit_log is what verify cross-checks with the log.
        figures["verify"] = verify({**env, "PIPELINE_DATABASE_SCHEMA": schemas[1]}, events)
    finally:
        if not args.keep:
            k = settings.kafka
            topics = [
                k.topic(t) for t in ("commands", "events", "outcomes", "aggregate-state", "commands.dead-letters")
            ]
            await drop(settings, schemas, topics)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log (default 1,000,000)")
    parser.add_argument("--keep", action="store_true", help="keep the topics and schemas")
    args = parser.parse_args()
    env = dict(with_running_system(os.environ))
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as data:
        if env.get("DATABASE_URL") and env.get("KAFKA_BOOTSTRAP_SERVERS"):
            print(json.dumps(asyncio.run(run(args, env, data)), indent=2))
            return 0
        from infra.provision.services import ManagedServices

        with ManagedServices(Path(data) / "services", log=lambda line: print(line, file=sys.stderr)) as managed:
            endpoints = managed.start()
            services = {
                "DATABASE_URL": endpoints.database_url,
                "KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka_bootstrap,
                "REDIS_URL": endpoints.redis_url,
            }
            print(json.dumps(asyncio.run(run(args, {**env, **services}, data)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
