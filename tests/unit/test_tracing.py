"""Trace context on the wire, and tracing's settings: off builds nothing."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

from commands.tracing import header_value, parent_context, trace_headers, traceparent
from infra.runtime.logs import ContextFilter, JsonFormatter
from infra.runtime.settings import MonitoringSettings, SettingsError
from infra.runtime.tracing import tracer_for, traces_url


def test_a_span_travels_as_a_traceparent_header_and_comes_back_as_its_parent() -> None:
    span = TracerProvider().get_tracer("t").start_span("send")
    headers = [("event_type", b"x"), *trace_headers(span)]
    value = header_value(headers)
    assert value is not None and value.decode() == traceparent(span)
    context = span.get_span_context()
    assert value.decode() == f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    child = TracerProvider().get_tracer("t").start_span("process", context=parent_context(value))
    assert isinstance(child, ReadableSpan) and child.parent is not None and child.parent.span_id == context.span_id


@pytest.mark.parametrize("value", [None, b"", b"garbage", b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01", b"\xff\xfe"])
def test_a_missing_or_malformed_traceparent_starts_a_new_trace(value: bytes | None) -> None:
    assert parent_context(value) is None


def test_tracing_off_builds_no_tracer() -> None:
    assert tracer_for(MonitoringSettings(), "api") is None


def test_an_otlp_endpoint_without_a_path_gets_the_traces_path() -> None:
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("https://collector/custom/path") == "https://collector/custom/path"
    with pytest.raises(SettingsError):
        traces_url("127.0.0.1:4318")


def test_log_lines_name_the_current_trace_when_tracing_is_on() -> None:
    record = logging.LogRecord("pipeline.test", logging.INFO, __file__, 1, "hello", None, None)
    with TracerProvider().get_tracer("t").start_as_current_span("request") as span:
        assert ContextFilter(traces=True).filter(record)
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert f"trace_id={trace_id}" in record.__dict__["context"]
    assert f'"trace_id": "{trace_id}"' in JsonFormatter().format(record)
    plain = logging.LogRecord("pipeline.test", logging.INFO, __file__, 1, "hello", None, None)
    assert ContextFilter().filter(plain) and "trace_id" not in plain.__dict__
