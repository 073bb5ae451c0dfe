"""W3C trace context on the wire: how a trace crosses Kafka records and NOTIFY changes.

A leaf module (it imports only the OpenTelemetry API), shared by the command bus, the processor, the
projection runner and the live hub. Every component takes a ``Tracer`` or ``None``; with ``None``
(tracing off, the default) none of these functions is called, so the write path does no header work
and makes no span objects. See infra/runtime/tracing.py for the chain of spans and what they cost.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

HEADER = "traceparent"  # the one W3C header carried; no tracestate or baggage is used here
_PROPAGATOR = TraceContextTextMapPropagator()


def traceparent(span: Span) -> str:
    """The span as a W3C ``traceparent`` value (empty for a span that is not recorded)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get(HEADER, "")


def trace_headers(span: Span) -> list[tuple[str, bytes]]:
    """Kafka record headers naming ``span`` as the parent of whatever handles the record."""
    value = traceparent(span)
    return [(HEADER, value.encode())] if value else []


def parent_context(value: str | bytes | None) -> Context | None:
    """The context a ``traceparent`` value names; None for a missing or malformed one (a new trace)."""
    if not value:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    context = _PROPAGATOR.extract({HEADER: text})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def header_value(headers: Iterable[tuple[str, bytes]]) -> bytes | None:
    """The ``traceparent`` of a Kafka record's headers, if any."""
    return next((value for key, value in headers if key == HEADER), None)
