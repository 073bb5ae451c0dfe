"""Tracing with OpenTelemetry: one trace from an HTTP request to the live message it causes.

Off by default. With ``monitoring.tracing_enabled`` (or a ``monitoring.otlp_endpoint``) each process
builds one SDK ``TracerProvider`` (``service.name`` ``pipeline-<part>``), samples new traces at
``monitoring.trace_sample_ratio`` (children follow their parent's decision) and, when
``monitoring.otlp_endpoint`` is set, batches spans to that OTLP/HTTP collector; without an endpoint
nothing is exported (trace ids still travel, and appear in the logs). Off, ``tracer_for`` answers
None, the components it is handed to skip every tracing step, and no OpenTelemetry middleware is
installed: the cost is one ``is None`` test per hop.

The chain of one write (each a child of the one above; the context crosses processes as a W3C
``traceparent``):

- ``POST /api/v1/ingest`` (SERVER): litestar's OpenTelemetry plugin; a caller's ``traceparent`` is honoured.
- ``send IngestData`` (PRODUCER): the command bus, from producing the command to its outcome; its
  ``traceparent`` goes into the command record's headers.
- ``process IngestData`` (CONSUMER): the processor, one per command, from its handling to the commit of
  its batch's Kafka transaction; its ``traceparent`` goes into the headers of every event it appends.
- ``apply DataObject.Ingested`` (CONSUMER): the projection runner, one per event, to the commit of its
  batch's PostgreSQL transaction; its ``traceparent`` rides in the NOTIFY change.
- ``live DataObject.Ingested``: the API's hub handing the change to WebSocket and GraphQL subscribers.
"""

from __future__ import annotations

import atexit
import logging
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Tracer

from infra.runtime.settings import MonitoringSettings, SettingsError

log = logging.getLogger("pipeline.tracing")
TRACES_PATH = "/v1/traces"  # OTLP/HTTP's path, added to an endpoint given without one

_providers: dict[str, TracerProvider] = {}


def tracing_on(monitoring: MonitoringSettings) -> bool:
    return monitoring.tracing_enabled or bool(monitoring.otlp_endpoint)


def traces_url(endpoint: str) -> str:
    """``http://host:4318`` -> ``http://host:4318/v1/traces``; a URL with a path is taken as it is."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"setting monitoring.otlp_endpoint must be an http(s) URL, not {endpoint!r}")
    return endpoint if parts.path not in ("", "/") else endpoint.rstrip("/") + TRACES_PATH


def tracer_provider(monitoring: MonitoringSettings, part: str) -> TracerProvider | None:
    """This process's provider for ``part`` (api, processor, projections, executor); None when off."""
    if not tracing_on(monitoring):
        return None
    if part in _providers:
        return _providers[part]
    if not 0.0 <= monitoring.trace_sample_ratio <= 1.0:
        raise SettingsError("setting monitoring.trace_sample_ratio must be between 0 and 1")
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"pipeline-{part}"}),
        sampler=ParentBased(TraceIdRatioBased(monitoring.trace_sample_ratio)),
    )
    if monitoring.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Batched in a thread of the SDK: the event loop only appends finished spans to a queue.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(monitoring.otlp_endpoint))))
        log.info("tracing on: spans go to %s", traces_url(monitoring.otlp_endpoint))
    else:
        log.info("tracing on: no monitoring.otlp_endpoint, so spans are not exported")
    if not _providers:
        trace.set_tracer_provider(provider)  # for libraries that trace through the global provider
        atexit.register(shutdown_tracing)
    _providers[part] = provider
    return provider


def tracer_for(monitoring: MonitoringSettings, part: str) -> Tracer | None:
    """The tracer ``part``'s components are handed; None when tracing is off."""
    provider = tracer_provider(monitoring, part)
    return provider.get_tracer(f"pipeline.{part}") if provider is not None else None


def shutdown_tracing() -> None:
    """Export what is still queued (a worker's last batches) before the process ends."""
    for provider in _providers.values():
        provider.shutdown()
    _providers.clear()
