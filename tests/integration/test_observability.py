"""Operations against the real system: Prometheus metrics after a known workload, /ready's checks, the
docs pages without a token, gzip and brotli, the CLI finding the system, and traces across processes
(the API and workers export to an OTLP receiver the module runs). One system serves the whole module."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from api.event_streams import EventStreams
from api.hub import LiveHub
from api.user_cache import UserCache
from commands.envelope import Actor, CommandEnvelope
from infra.runtime.bootstrap import build_api, build_processor, build_runner
from infra.runtime.runtime_file import write_runtime
from infra.runtime.settings import load_settings
from tests.conftest import environment_for
from tests.integration.conftest import login
from tests.integration.harness import ROOT, eventually
from tests.integration.otlp import OtlpReceiver, ReceivedSpan
from tests.integration.system import RunningSystem, running_system
from tests.integration.users import client_for, create_user

METRICS = "/internal/metrics"  # not the default: the route must follow monitoring.metrics_path
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
async def system(
    services: dict[str, str], tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver
) -> AsyncIterator[RunningSystem]:
    tmp_path = tmp_path_factory.mktemp("observability")
    env = {
        **environment_for(services, tmp_path),
        "PIPELINE_MONITORING_METRICS_PATH": METRICS,
        "PIPELINE_MONITORING_LOG_FORMAT": "json",
        "PIPELINE_MONITORING_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # the SDK's export interval (ms): spans arrive soon
    }
    async with running_system(env, tmp_path) as running:
        yield running


async def scrape(http: httpx.AsyncClient) -> Samples:
    """Every sample of the metrics page, parsed by prometheus_client's own parser."""
    response = await http.get(METRICS)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


WORKER_COUNTERS = ("pipeline_processor_batch_records_total", "pipeline_projection_events_applied_total")


async def settled(http: httpx.AsyncClient) -> Samples:
    """A scrape once the workers' counters stand still across two heartbeats.

    Workers report through heartbeat files written about once a second, so right after start-up
    (the first admin's registration) a scrape can still miss a batch that has been processed.
    """
    previous = await scrape(http)

    async def unchanged() -> Samples | None:
        nonlocal previous
        await asyncio.sleep(1.5)
        now = await scrape(http)
        stable = all(
            value(now, name, **dict(labels)) == value(previous, name, **dict(labels))
            for name, labels in now
            if name in WORKER_COUNTERS
        )
        previous = now
        return now if stable else None

    return await eventually(unchanged, timeout=30, what="the workers' counters to stand still")


async def test_metrics_count_a_known_workload_exactly(system: RunningSystem) -> None:
    anonymous, admin = system.anonymous, system.admin
    assert (await anonymous.get("/metrics")).status_code == 404  # moved by the setting
    before = await settled(anonymous)  # no token needed

    ids = []
    for n in range(5):
        created = await admin.post("/api/v1/ingest", json={"content": f"metrics {n}", "content_type": "text/plain"})
        assert created.status_code == 201, created.text
        ids.append(created.json()["object_id"])
    for object_id in ids[:2]:
        assert (await admin.get(f"/api/v1/data/{object_id}")).status_code == 200
    assert (await admin.get(f"/api/v1/data/{uuid.uuid4()}")).status_code == 404
    assert (await admin.post("/api/v1/ingest", json={"content": 1})).status_code == 400
    assert (await anonymous.get("/no/such/route")).status_code in (401, 404)

    after = await scrape(anonymous)
    ingest = {"method": "POST", "route": "/api/v1/ingest"}
    assert delta(after, before, "pipeline_http_requests_total", **ingest, status="201") == 5
    assert delta(after, before, "pipeline_http_requests_total", **ingest, status="400") == 1
    assert delta(after, before, "pipeline_http_request_duration_seconds_count", **ingest) == 6
    data_route = {"method": "GET", "route": "/api/v1/data/{object_id}"}
    assert delta(after, before, "pipeline_http_requests_total", **data_route, status="200") == 2
    assert delta(after, before, "pipeline_http_requests_total", **data_route, status="404") == 1
    unmatched = [k for k in after if k[0] == "pipeline_http_requests_total" and ("route", "/no/such/route") in k[1]]
    assert unmatched == []  # raw paths never become labels
    assert delta(after, before, "pipeline_commands_total", type="IngestData", outcome="accepted") == 5
    assert delta(after, before, "pipeline_command_roundtrip_seconds_count", type="IngestData") == 5
    assert value(after, "pipeline_projection_dead_letters") == 0

    # The workers' families arrive with their next heartbeat (about a second).
    async def workers_counted() -> Samples | None:
        now = await scrape(anonymous)
        applied = delta(now, before, "pipeline_projection_events_applied_total", projection="read-models")
        consumed = delta(now, before, "pipeline_processor_batch_records_total")
        return now if applied == 5 and consumed == 5 else None

    now = await eventually(workers_counted, timeout=30, what="the workers' counters to show the 5 ingests")
    assert delta(now, before, "pipeline_processor_batches_total") >= 1
    assert delta(now, before, "pipeline_processor_transaction_seconds_total") > 0
    phases = {
        phase: delta(now, before, "pipeline_processor_transaction_phase_seconds_total", phase=phase)
        for phase in ("run", "results", "commit")
    }
    assert all(seconds > 0 for seconds in phases.values()), phases
    assert sum(phases.values()) == pytest.approx(
        delta(now, before, "pipeline_processor_transaction_seconds_total"), rel=1e-6
    )
    for worker in ("processor", "projections", "executor"):
        assert value(now, "pipeline_worker_up", worker=worker) == 1
        assert value(now, "pipeline_worker_dead_letters_total", worker=worker) == 0
    partitions = [dict(k[1])["partition"] for k in now if k[0] == "pipeline_projection_lag_records"]
    count = int(system.env["PIPELINE_KAFKA_PARTITIONS"])
    assert sorted(partitions) == [str(p) for p in range(count)]  # one sample per partition

    async def caught_up() -> bool:
        now = await scrape(anonymous)
        lag_names = ("pipeline_projection_lag_records", "pipeline_projection_lag_seconds")
        lags = [v for k, v in now.items() if k[0] in lag_names]
        return len(lags) == 2 * count and all(v == 0 for v in lags)

    await eventually(caught_up, timeout=30, what="projection lag to be 0 in the metrics")


async def test_ready_reports_every_check_with_its_latency(system: RunningSystem) -> None:
    response = await system.anonymous.get("/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready" and body["reasons"] == []
    expected = {"postgres", "kafka", "redis", "blob_store", "first_admin", "projection_lag"}
    expected |= {f"worker_{w}" for w in ("processor", "projections", "executor")}
    assert set(body["checks"]) == expected
    for check in body["checks"].values():
        assert check["status"] == "ok"
        assert isinstance(check["latency_ms"], int | float) and check["latency_ms"] >= 0
    assert body["checks"]["projection_lag"]["detail"]["limit"] == 10000


async def test_docs_and_the_graphql_ide_open_without_a_token(system: RunningSystem) -> None:
    anonymous = system.anonymous
    ide = await anonymous.get("/api/graphql", headers={"Accept": "text/html"})
    assert ide.status_code == 200 and "<html" in ide.text.lower()
    # An operation still needs a token, by GET as by POST.
    assert (await anonymous.get("/api/graphql", params={"query": "{ __typename }"})).status_code == 401
    assert (await anonymous.post("/api/graphql", json={"query": "{ __typename }"})).status_code == 401
    swagger = await anonymous.get("/api/docs")
    assert swagger.status_code == 200 and "swagger" in swagger.text.lower()
    redoc = await anonymous.get("/api/redoc", follow_redirects=True)
    assert redoc.status_code == 200 and "redoc" in redoc.text.lower()


@pytest.mark.parametrize("encoding", ["br", "gzip"])
async def test_large_responses_are_compressed_and_small_ones_are_not(system: RunningSystem, encoding: str) -> None:
    accept = {"Accept-Encoding": encoding}
    large = await system.anonymous.get("/api/docs/openapi.json", headers=accept)
    assert large.status_code == 200 and large.headers.get("content-encoding") == encoding
    assert large.json()["openapi"]  # httpx decoded it (brotli through the brotli package)
    assert large.num_bytes_downloaded < len(large.content) / 5  # really compressed on the wire
    both = await system.anonymous.get("/api/docs/openapi.json", headers={"Accept-Encoding": "gzip, br"})
    assert both.headers.get("content-encoding") == "br"  # preferred when the client takes either
    small = await system.admin.get(f"/api/v1/data/{uuid.uuid4()}", headers=accept)
    assert small.status_code == 404 and len(small.content) < 1000
    assert "content-encoding" not in small.headers


async def test_pipeline_user_create_finds_the_running_system_from_runtime_json(system: RunningSystem) -> None:
    """Beside a running system, with none of its addresses in the environment: runtime.json supplies them."""
    settings = load_settings(environ=system.env)
    data_dir = Path(settings.storage.data_dir)
    write_runtime(data_dir, settings, pids={}, service_pids={})  # as the supervisor does; its pid is ours
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "PIPELINE_DATA_DIR": str(data_dir)}
    password = "made beside the running system"

    def create() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            # What the `pipeline` console script runs, from this checkout (sys.path starts at cwd).
            [sys.executable, "-m", "infra.cli", "user", "create", "beside", "--password-stdin"],
            input=password + "\n",
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        created = await asyncio.to_thread(create)
    finally:
        (data_dir / "runtime.json").unlink()
    assert created.returncode == 0, created.stderr
    tokens = await login(system.anonymous, "beside", password)
    assert tokens["access_token"]


async def test_every_process_logs_json_lines(system: RunningSystem) -> None:
    for name in ("api", "processor", "projections", "executor"):
        lines = [line for line in (system.logs / f"{name}.log").read_text().splitlines() if line.strip()]
        assert lines, f"{name} logged nothing"
        for line in lines:
            entry = json.loads(line)
            assert {"time", "level", "logger", "message"} <= set(entry), line


async def test_an_execution_shows_in_the_executor_and_execution_metrics(system: RunningSystem) -> None:
    before = await scrape(system.anonymous)
    graph = {
        "nodes": [{"id": "src", "type": "input", "params": {"name": "text"}}, {"id": "n", "type": "normalize"}],
        "edges": [{"from": "src.value", "to": "n.text"}],
    }
    submitted = await system.admin.post("/api/v1/execute", json={"graph": graph, "inputs": {"text": "Metrics Run"}})
    assert submitted.status_code == 202, submitted.text

    async def counted() -> Samples | None:
        now = await scrape(system.anonymous)
        done = delta(now, before, "pipeline_executor_nodes_total", type="normalize", outcome="completed")
        finished = delta(now, before, "pipeline_executions", status="completed")
        return now if done == 1 and finished == 1 else None

    now = await eventually(counted, timeout=60, what="the execution's node and status in the metrics")
    assert delta(now, before, "pipeline_executor_nodes_total", type="input", outcome="completed") == 1
    assert delta(now, before, "pipeline_executor_node_seconds_total", type="normalize") > 0


async def test_rate_limit_refusals_are_counted_by_role(system: RunningSystem) -> None:
    await create_user(system.admin, "metrics-viewer", role="viewer")
    before = await scrape(system.anonymous)
    refused = 0
    async with await client_for(system.anonymous, "metrics-viewer") as viewer:
        for _ in range(110):  # rate_limiting.viewer_limit is 100 per hour
            status = (await viewer.get("/api/v1/auth/me")).status_code
            assert status in (200, 429)
            refused += status == 429
    assert refused >= 10
    after = await scrape(system.anonymous)
    assert delta(after, before, "pipeline_rate_limit_refusals_total", role="viewer") == refused
    route = {"method": "GET", "route": "/api/v1/auth/me"}  # refused after routing: counted under the route
    assert delta(after, before, "pipeline_http_requests_total", **route, status="429") == refused


async def test_one_trace_runs_from_the_request_through_the_workers_to_the_live_message(
    system: RunningSystem, otlp: OtlpReceiver
) -> None:
    # The caller's own trace context is honoured, so the test knows the trace id.
    trace_id, caller_span = os.urandom(16).hex(), os.urandom(8).hex()
    headers = {"traceparent": f"00-{trace_id}-{caller_span}-01"}
    created = await system.admin.post(
        "/api/v1/ingest", json={"content": "traced", "content_type": "text/plain"}, headers=headers
    )
    assert created.status_code == 201, created.text
    chain = [
        ("pipeline-api", "POST /api/v1/ingest"),
        ("pipeline-api", "send IngestData"),
        ("pipeline-processor", "process IngestData"),
        ("pipeline-projections", "apply DataObject.Ingested"),
        ("pipeline-api", "live DataObject.Ingested"),
    ]

    async def whole_chain() -> dict[str, ReceivedSpan] | None:
        spans = {span.name: span for span in otlp.spans() if span.trace_id == trace_id}
        return spans if all(name in spans for _, name in chain) else None

    spans = await eventually(whole_chain, timeout=30, what=f"the spans of trace {trace_id}")
    parent = caller_span
    for service, name in chain:
        span = spans[name]
        assert (span.service, span.parent_span_id) == (service, parent), (name, span)
        parent = span.span_id
    assert spans["POST /api/v1/ingest"].attributes["http.route"] == "/api/v1/ingest"
    assert spans["process IngestData"].attributes["pipeline.outcome"] == "accepted"
    # The start-up's /health probes (long exported by now) are not traced.
    server = [span for span in otlp.spans() if span.kind == 2]  # SPAN_KIND_SERVER: one per traced HTTP request
    assert not [span for span in server if span.attributes.get("http.target") in ("/health", "/ready")]
    routed = [span for span in server if "http.route" in span.attributes]
    assert routed and all(span.name.endswith(f" {span.attributes['http.route']}") for span in routed), [
        (span.name, span.attributes) for span in routed
    ]  # named by the route template, never by a path with ids in it


async def test_spans_of_one_command_link_up_in_process(services: dict[str, str], tmp_path: Path) -> None:
    """The same chain with the SDK's in-memory exporter, every component in this process and handed one tracer."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    settings = load_settings(environ=environment_for(services, tmp_path))
    container = await build_api(settings, tracer)
    processor = await build_processor(settings, tracer)
    runner = await build_runner(settings, tracer=tracer)
    users = UserCache(container.changes, container.pool)
    events = EventStreams(container.changes, container.pool, settings.event_stream)
    hub = LiveHub(container.changes, container.pool, users, events, tracer=tracer)
    hub.start()
    stop = asyncio.Event()
    workers = [asyncio.create_task(processor.run(stop)), asyncio.create_task(runner.run(stop))]
    try:
        payload = {"content_type": "application/octet-stream", "content_hash": "ab" * 32, "size": 1, "location": "x"}
        envelope = CommandEnvelope(
            command_id=str(uuid.uuid4()),
            type="IngestData",
            aggregate_id=str(uuid.uuid4()),
            payload=payload,
            actor=Actor("tester", "admin"),
        )
        with tracer.start_as_current_span("request") as request:
            outcome = await container.bus.submit(envelope)
        assert outcome.accepted, outcome

        def named(name: str) -> ReadableSpan | None:
            return next((span for span in exporter.get_finished_spans() if span.name == name), None)

        async def live_span() -> ReadableSpan | None:
            return named("live DataObject.Ingested")

        live = await eventually(live_span, timeout=30, what="the live message's span")
        send, process, apply = (
            named(n) for n in ("send IngestData", "process IngestData", "apply DataObject.Ingested")
        )
        assert send and process and apply
        parent = request.get_span_context()
        for span in (send, process, apply, live):
            assert span.parent is not None and span.parent.span_id == parent.span_id, span.name
            assert span.context.trace_id == parent.trace_id
            parent = span.context
        assert process.kind is SpanKind.CONSUMER and send.kind is SpanKind.PRODUCER
    finally:
        stop.set()
        await asyncio.gather(*workers)
        await hub.stop()
        await container.close()
        await runner.pool.close()
