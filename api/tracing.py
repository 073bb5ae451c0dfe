"""The HTTP end of a trace: litestar's OpenTelemetry plugin, installed only when tracing is on.

Each HTTP request gets a SERVER span (a caller's W3C ``traceparent`` is honoured), named
``<METHOD> <route template>`` once the route is known, so ids in paths do not make every name
unique. The scrape and probe paths are not traced, nor are WebSocket connections (their live
messages are: api/hub.py). See infra/runtime/tracing.py for the whole chain.
"""

from __future__ import annotations

import re
from typing import Any

from litestar.enums import ScopeType
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.types import Message, Scope
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE

from infra.runtime.settings import MonitoringSettings


def tracing_plugin(provider: TracerProvider, monitoring: MonitoringSettings) -> OpenTelemetryPlugin:
    """The plugin for this process's provider; health, readiness and metrics are left out."""
    quiet = [monitoring.health_check_path, "/ready", monitoring.metrics_path]
    return OpenTelemetryPlugin(
        OpenTelemetryConfig(
            tracer_provider=provider,
            scopes={ScopeType.HTTP},
            exclude=[f"^{re.escape(path)}$" for path in quiet],
            exclude_spans=["receive", "send"],  # one span per request, not one per ASGI message
            scope_span_details_extractor=_span_details,
        )
    )


def _span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    # Before routing only the method is known; name_span_by_route completes the name.
    return str(scope.get("method", "HTTP")), {}


async def name_span_by_route(message: Message, scope: Scope) -> None:
    """A ``before_send`` hook: name the request's span ``<METHOD> <route template>``."""
    if message["type"] != "http.response.start":
        return
    span = trace.get_current_span()
    route = scope.get("path_template")
    if route and span.is_recording():
        span.update_name(f"{scope.get('method', '')} {route}")
        span.set_attribute(HTTP_ROUTE, route)
