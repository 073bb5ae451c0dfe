"""Prometheus metrics: the API's own, and the workers' as read from their heartbeats.

Where each family comes from (README "Metrics"):

- The API process counts in its own registry (``REGISTRY``): HTTP requests and latency by route
  template, commands by type and outcome with their round-trip time (from the command bus), WebSocket
  connections and dropped live messages, rate-limit refusals.
- The workers do not open a port of their own: each writes its counters into its heartbeat file
  (infra.runtime.heartbeat, about once a second), and ``WorkerCollector`` turns the files into metric families
  at scrape time, so one scrape of the API's ``monitoring.metrics_path`` shows the whole system. The
  price is up to a second of staleness and one API process per data directory doing the reading; with
  workers on other machines (docker-compose) their heartbeats are not visible and their families absent.
- Read-model facts that live in PostgreSQL (executions by status, projection dead letters) are
  gauges refreshed by the metrics route just before it renders (``observe_read_models``).

``server.workers > 1`` would give each uvicorn process its own registry and a scrape would see one of
them; the API runs one process per port here (scale by more ports behind a balancer, each scraped).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infra.runtime.heartbeat import INTERVAL, heartbeat_path, read_beat

REGISTRY = CollectorRegistry()
WORKERS = ("processor", "projections", "executor")

HTTP_REQUESTS = Counter(
    "pipeline_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=REGISTRY
)
HTTP_LATENCY = Histogram(
    "pipeline_http_request_duration_seconds", "HTTP request latency", ["method", "route"], registry=REGISTRY
)
COMMANDS = Counter(
    "pipeline_commands", "Commands submitted by the API, by type and outcome", ["type", "outcome"], registry=REGISTRY
)
COMMAND_ROUNDTRIP = Histogram(
    "pipeline_command_roundtrip_seconds",
    "From producing a command to receiving its outcome",
    ["type"],
    registry=REGISTRY,
)
WEBSOCKET_CONNECTIONS = Gauge("pipeline_websocket_connections", "Open WebSocket connections", registry=REGISTRY)
WEBSOCKET_DROPPED = Counter(
    "pipeline_websocket_dropped_messages", "Live messages dropped for slow WebSocket clients", registry=REGISTRY
)
EVENT_STREAM_OVERFLOWS = Counter(
    "pipeline_event_stream_overflows",
    "Event-stream buffers that overflowed: a live stream ends with lagged, a catching-up one reads on",
    registry=REGISTRY,
)
RATE_LIMIT_REFUSALS = Counter(
    "pipeline_rate_limit_refusals", "Requests refused by the rate limiter", ["role"], registry=REGISTRY
)
EXECUTIONS = Gauge("pipeline_executions", "Executions in the read model by status", ["status"], registry=REGISTRY)
PROJECTION_DEAD_LETTERS = Gauge(
    "pipeline_projection_dead_letters",
    "Events the projections set aside and nobody retried or skipped yet (`pipeline dlq`)",
    registry=REGISTRY,
)


class WorkerCollector(Collector):
    """The workers' metric families, read from their heartbeat files under ``data_dir`` at scrape time."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = data_dir

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("pipeline_worker_up", "1 if the worker wrote a heartbeat lately", labels=["worker"])
        lag = GaugeMetricFamily(
            "pipeline_consumer_lag_records",
            "Records not yet consumed, by worker (consumer group) and partition",
            labels=["worker", "partition"],
        )
        projection_lag = GaugeMetricFamily(
            "pipeline_projection_lag_records", "Events not yet applied to the read models", labels=["partition"]
        )
        projection_lag_s = GaugeMetricFamily(
            "pipeline_projection_lag_seconds",
            "Age of the last applied event while events wait (0 when caught up)",
            labels=["partition"],
        )
        dead = CounterMetricFamily(
            "pipeline_worker_dead_letters", "Records a worker set aside since it started", labels=["worker"]
        )
        counters: dict[str, CounterMetricFamily] = {}
        now = time.time()
        for worker in WORKERS:
            beat = read_beat(heartbeat_path(self.data_dir, worker))
            if beat is None:
                continue
            up.add_metric([worker], 1.0 if now - beat.written_at <= max(5 * INTERVAL, 5.0) else 0.0)
            dead.add_metric([worker], float(beat.dead_letters))
            for partition, records in sorted(beat.partition_lag.items()):
                lag.add_metric([worker, partition], float(records))
                if worker == "projections":
                    projection_lag.add_metric([partition], float(records))
                    projection_lag_s.add_metric([partition], float(beat.partition_lag_seconds.get(partition, 0.0)))
            for sample in beat.counters:
                name, labels, value = sample["name"], sample["labels"], float(sample["value"])
                family = counters.get(name)
                if family is None:
                    family = counters[name] = CounterMetricFamily(
                        name, f"{name} (from the {worker} worker)", labels=sorted(labels)
                    )
                family.add_metric([labels[k] for k in sorted(labels)], value)
        yield from (up, lag, projection_lag, projection_lag_s, dead, *counters.values())
