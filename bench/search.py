"""Search benchmark: a deterministic text corpus through the API, then a query mix at 1 and 16 connections,
then large-file upload throughput; prints JSON.

The corpus (``--objects``, default 100,000) is generated from a fixed seed: sentences of words drawn
with a Zipf-like skew from a fixed vocabulary, each object tagged with a topic, ingested through
``POST /api/v1/ingest`` (the normal command path) by ``--writers`` concurrent clients. Once the read
model holds all of it, each query of the mix (common and rare words, phrases, OR, exclusion, prefix,
a filter, metadata modality) runs round-robin for ``--seconds`` at 1 and at 16 connections: queries/s
and p50/p99 latency. Then ``--upload-mib`` files are uploaded through ``POST /api/v1/upload``: MB/s.
Against a running system with --url, or, without it, one it starts itself (see bench/execute.py).

    python bench/search.py --objects 100000 [--url http://127.0.0.1:8000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from execute import BENCH_ADMIN, log_in, own_system, percentile

from infra.runtime.progress import Progress  # (execute put the project on sys.path)

SEED = 20261201
TOPICS = ["kafka", "postgres", "search", "graphs", "storage", "security", "networks", "compilers"]
COMMON = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "at",
    "this",
    "from",
    "or",
    "an",
    "are",
    "which",
    "have",
    "not",
    "but",
    "all",
    "were",
    "when",
    "we",
    "there",
    "can",
    "more",
    "if",
    "no",
    "out",
    "so",
    "said",
    "what",
    "up",
    "its",
    "about",
    "into",
    "than",
    "them",
    "only",
    "other",
    "new",
    "some",
    "time",
    "could",
    "these",
    "two",
    "may",
    "then",
    "do",
    "first",
    "any",
    "like",
    "now",
    "my",
    "such",
    "make",
    "over",
    "our",
    "even",
    "most",
    "after",
    "also",
    "made",
    "many",
    "before",
]
DOMAIN = [
    "log",
    "partition",
    "offset",
    "broker",
    "consumer",
    "producer",
    "transaction",
    "index",
    "query",
    "planner",
    "vacuum",
    "replica",
    "snapshot",
    "tokenizer",
    "ranking",
    "lexeme",
    "headline",
    "stemming",
    "node",
    "edge",
    "cycle",
    "scheduler",
    "executor",
    "blob",
    "hash",
    "checksum",
    "fsync",
    "directory",
    "permission",
    "token",
    "session",
    "cipher",
    "certificate",
    "router",
    "packet",
    "latency",
    "throughput",
    "bandwidth",
    "parser",
    "lexer",
    "grammar",
    "optimizer",
    "register",
    "allocation",
    "inline",
    "loop",
    "vector",
    "cache",
    "eviction",
    "compaction",
    "retention",
]
RARE = [f"zq{i:04d}x" for i in range(2000)]  # words that occur in few objects: selective queries


def corpus_text(rng: random.Random, topic: str) -> str:
    """A few sentences: mostly common words, some domain words, now and then a rare one, and the topic."""
    sentences = []
    for _ in range(rng.randint(3, 8)):
        words = []
        for _ in range(rng.randint(8, 20)):
            roll = rng.random()
            if roll < 0.6:
                words.append(COMMON[min(int(rng.paretovariate(1.2)) - 1, len(COMMON) - 1)])
            elif roll < 0.95:
                words.append(rng.choice(DOMAIN))
            elif roll < 0.98:
                words.append(topic)
            else:
                words.append(rng.choice(RARE))
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def query_mix(run: str) -> list[dict[str, Any]]:
    return [
        {"query": "partition"},
        {"query": "zq0042x"},
        {"query": '"consumer producer"'},
        {"query": "vacuum or compaction"},
        {"query": "broker -replica"},
        {"query": "comp*"},
        {"query": "latency", "filters": json.dumps({"metadata": {"topic": "networks"}})},
        {"modality": "metadata", "filters": json.dumps({"metadata": {"bench": run, "topic": "kafka"}})},
    ]


async def ingest_corpus(
    http: httpx.AsyncClient, objects: int, writers: int, run: str, done: frozenset[int] = frozenset()
) -> dict[str, float]:
    rng = random.Random(SEED)
    bodies = []
    for n in range(objects):
        topic = TOPICS[n % len(TOPICS)]
        body: dict[str, Any] = {
            "content": corpus_text(rng, topic),
            "content_type": "text/plain",
            "metadata": {"bench": run, "topic": topic, "n": n},
        }
        if n not in done:  # the text is drawn either way, so object n is the same text in every run
            bodies.append(body)
    queue = list(reversed(bodies))
    started = time.perf_counter()
    bar = Progress(len(bodies), "ingest", unit="objects")  # on stderr; stdout is the JSON
    stored = [0]

    async def writer() -> None:
        while queue:
            body = queue.pop()
            # Object n's key: a retry after a dropped connection cannot ingest it twice.
            headers = {"Idempotency-Key": f"bench-search-{run}-{body['metadata']['n']}"}
            for attempt in range(5):
                try:
                    response = await http.post("/api/v1/ingest", json=body, headers=headers)
                    break
                except httpx.TransportError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5 * 2**attempt)
            response.raise_for_status()
            stored[0] += 1
            bar.track(stored[0], len(bodies))

    await asyncio.gather(*(writer() for _ in range(writers)))
    bar.finish(stored[0])
    accepted = time.perf_counter() - started
    print(f"waiting until all {objects} objects are searchable...", file=sys.stderr, flush=True)
    wanted: dict[str, Any] = {"modality": "metadata", "limit": 1, "filters": json.dumps({"metadata": {"bench": run}})}
    while (await http.get("/api/v1/search", params=wanted)).json()["total"] < objects:
        await asyncio.sleep(1)
    searchable = time.perf_counter() - started
    return {
        "objects": objects,
        "ingest_per_s": round(objects / accepted, 1),
        "searchable_after_s": round(searchable, 1),
    }


async def run_queries(url: str, token: str, mix: list[dict[str, Any]], connections: int, seconds: float) -> dict:
    times: list[float] = []
    totals: dict[str, int] = {}
    deadline = time.perf_counter() + seconds
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers, limits=limits) as http:

        async def client(offset: int) -> None:
            i = offset
            while time.perf_counter() < deadline:
                params = mix[i % len(mix)]
                i += 1
                started = time.perf_counter()
                response = await http.get("/api/v1/search", params=params)
                times.append(time.perf_counter() - started)
                response.raise_for_status()
                totals[json.dumps(params)] = response.json()["total"]

        started = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(connections)))
        wall = time.perf_counter() - started
    return {
        "connections": connections,
        "queries": len(times),
        "queries_per_s": round(len(times) / wall, 1),
        "p50_ms": round(percentile(times, 50) * 1000, 1),
        "p99_ms": round(percentile(times, 99) * 1000, 1),
        "matches_per_query": totals,
    }


async def upload_throughput(http: httpx.AsyncClient, mib: int, rounds: int) -> dict[str, float]:
    rng = random.Random(SEED)
    rates = []
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        for n in range(rounds):
            path = Path(tmp) / f"large-{n}.bin"
            with path.open("wb") as f:
                for _ in range(mib):
                    f.write(rng.randbytes(1024 * 1024))
            with path.open("rb") as f:
                started = time.perf_counter()
                response = await http.post(
                    "/api/v1/upload", files=[("files", (path.name, f, "application/octet-stream"))]
                )
                elapsed = time.perf_counter() - started
            response.raise_for_status()
            rates.append(mib * 1.048576 / elapsed)
    return {"file_mib": mib, "rounds": rounds, "upload_mb_per_s": round(sorted(rates)[len(rates) // 2], 1)}


async def drive(url: str, args: argparse.Namespace, username: str, password: str) -> dict[str, Any]:
    run = args.run or uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        await log_in(http, username, password)
        token = http.headers["Authorization"].removeprefix("Bearer ")
        done = frozenset(int(line) for line in args.done.read_text().split()) if args.done else frozenset()
        corpus = (
            await ingest_corpus(http, args.objects, args.writers, run, done) if not args.skip_ingest else {"run": run}
        )
        if args.ingest_only:
            return {"corpus": corpus, "run": run}
        mix = query_mix(run)
        queries = []
        for connections in (1, 16):
            print(f"searching for {args.seconds}s with {connections} connection(s)...", file=sys.stderr, flush=True)
            queries.append(await run_queries(url, token, mix, connections, args.seconds))
        print(f"uploading {args.upload_rounds} file(s) of {args.upload_mib} MiB...", file=sys.stderr, flush=True)
        upload = await upload_throughput(http, args.upload_mib, args.upload_rounds)
    return {"corpus": corpus, "queries": queries, "upload": upload, "cores": os.cpu_count() or 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running system's API (default: start one)")
    parser.add_argument("--objects", type=int, default=100_000, help="objects in the corpus (default 100000)")
    parser.add_argument("--writers", type=int, default=32, help="concurrent ingest connections (default 32)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per connection count")
    parser.add_argument("--upload-mib", type=int, default=100, help="size of each uploaded file (default 100)")
    parser.add_argument("--upload-rounds", type=int, default=3, help="uploads; the median rate is reported (default 3)")
    parser.add_argument("--run", help="the corpus's tag (default: a new one); with --skip-ingest, an earlier run's")
    parser.add_argument("--skip-ingest", action="store_true", help="query a corpus an earlier --run ingested")
    parser.add_argument("--done", type=Path, help="a file of object numbers an interrupted --run already ingested")
    parser.add_argument("--ingest-only", action="store_true", help="ingest the corpus and stop (see --run)")
    parser.add_argument(
        "--username",
        default=os.environ.get("PIPELINE_ADMIN_USERNAME", "admin"),
        help="with --url: an admin (default: PIPELINE_ADMIN_USERNAME or admin)",
    )
    parser.add_argument(
        "--password",
        default=os.environ.get("PIPELINE_ADMIN_PASSWORD", ""),
        help="with --url: their password (default: PIPELINE_ADMIN_PASSWORD)",
    )
    args = parser.parse_args()
    if args.url:
        figures = asyncio.run(drive(args.url, args, args.username, args.password))
    else:
        with own_system() as url:
            figures = asyncio.run(drive(url, args, *BENCH_ADMIN))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
