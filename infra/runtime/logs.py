"""Logging for every process: text or JSON lines (``monitoring.log_format``), with the request id and
actor of the request being served (and its trace id when tracing is on), and repeated conditions rate-limited.

The request id and actor travel in context variables (set by api.middleware and api.auth), so any
logger called while a request is served names them without being handed them. A condition that
repeats (the same logger, level and message template, whatever its arguments) is written at most
``REPEAT_BURST`` times per ``REPEAT_WINDOW_S``; the first record after a quiet spell says how many
were left out (before it, a line repeated per batch, such as the projection runner's old re-read after
every transaction marker, came dozens of times a minute under load).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from infra.runtime.settings import MonitoringSettings, SettingsError
from infra.runtime.tracing import tracing_on

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"
FORMATS = ("text", "json")
REPEAT_WINDOW_S = 60.0
REPEAT_BURST = 10  # a restart's "owns partition N" for each partition still gets through
MAX_KEYS = 1000

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
actor_var: contextvars.ContextVar[str] = contextvars.ContextVar("actor", default="")


class ContextFilter(logging.Filter):
    """Adds ``request_id`` and ``actor`` (empty outside a request), with ``traces`` the current span's
    ``trace_id`` (infra.runtime.tracing), and a ``context`` text suffix."""

    def __init__(self, traces: bool = False) -> None:
        super().__init__()
        self.traces = traces

    def filter(self, record: logging.LogRecord) -> bool:
        request_id, actor = request_id_var.get(), actor_var.get()
        record.__dict__.update(request_id=request_id, actor=actor)
        parts = [f"request_id={request_id}"] if request_id else []
        if actor:
            parts.append(f"actor={actor}")
        if self.traces:
            span = trace.get_current_span().get_span_context()
            record.__dict__["trace_id"] = trace_id = f"{span.trace_id:032x}" if span.is_valid else ""
            if trace_id:
                parts.append(f"trace_id={trace_id}")
        record.__dict__["context"] = f" [{' '.join(parts)}]" if parts else ""
        return True


class RepeatFilter(logging.Filter):
    """At most ``burst`` records per (logger, level, template) per ``window`` seconds."""

    def __init__(
        self, window: float = REPEAT_WINDOW_S, burst: int = REPEAT_BURST, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window = window
        self.burst = burst
        self.clock = clock
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # key -> [window start, written, left out]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        if len(self._seen) > MAX_KEYS:  # messages built with f-strings never repeat: forget old ones
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
        seen = self._seen.get(key)
        if seen is None or now - seen[0] >= self.window:
            left_out = int(seen[2]) if seen else 0
            self._seen[key] = [now, 1, 0]
            if left_out:
                record.msg = f"{record.msg} ({left_out} more like this in the last {self.window:.0f} s left out)"
            return True
        if seen[1] < self.burst:
            seen[1] += 1
            return True
        seen[2] += 1
        return False


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, actor, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("request_id", "actor", "trace_id"):
            value = getattr(record, name, "")
            if value:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(monitoring: MonitoringSettings, level: int = logging.INFO) -> None:
    """Replace the root logger's handlers with one to stderr in the configured format."""
    if monitoring.log_format not in FORMATS:
        raise SettingsError(f"setting monitoring.log_format must be one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter(traces=tracing_on(monitoring)))
    handler.addFilter(RepeatFilter())
    if monitoring.log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # Python warnings become log records in the same format
